package inbound

import (
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// limitListener caps the connections open at once (BRIDGE_MAX_CONNECTIONS).
// At the cap it stops accepting, so further clients wait in the kernel's
// listen queue until a connection closes, rather than each holding a
// descriptor and a goroutine here. It also remembers when it last accepted,
// which tells the drain when clients have stopped connecting.
//
// golang.org/x/net/netutil.LimitListener does the same but its connections
// hide CloseWrite, which net/http needs to half-close a connection it answered
// with "Connection: close" before closing it; without that, a client whose
// next request is already on the wire gets a reset instead of the answer.
type limitListener struct {
	net.Listener
	sem        chan struct{}
	done       chan struct{}
	closeOnce  sync.Once
	lastAccept atomic.Int64 // unix nanoseconds
	open       prometheus.Gauge
	waits      prometheus.Counter
}

func newLimitListener(ln net.Listener, max int, m *metrics) *limitListener {
	return &limitListener{Listener: ln, sem: make(chan struct{}, max), done: make(chan struct{}),
		open: m.openConns, waits: m.connLimitWaits}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	default:
		l.waits.Inc()
		select {
		case l.sem <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	l.lastAccept.Store(time.Now().UnixNano())
	l.open.Inc()
	return &limitConn{Conn: c, release: l.release}, nil
}

func (l *limitListener) release() {
	l.open.Dec()
	<-l.sem
}

func (l *limitListener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() { close(l.done) })
	return err
}

// sinceAccept is how long ago the last connection was accepted (ever, if
// none was).
func (l *limitListener) sinceAccept() time.Duration {
	last := l.lastAccept.Load()
	if last == 0 {
		return time.Duration(1<<63 - 1)
	}
	return time.Since(time.Unix(0, last))
}

// limitConn gives its slot back once, on the first Close.
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite half-closes a TCP connection (see limitListener).
func (c *limitConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// connTracker follows every connection's state through http.Server's
// ConnState hook, so the drain knows what is open and can close connections
// that connected but never sent a request.
type connTracker struct {
	mu    sync.Mutex
	conns map[net.Conn]connState
}

type connState struct {
	state http.ConnState
	since time.Time
}

func newConnTracker() *connTracker { return &connTracker{conns: map[net.Conn]connState{}} }

func (t *connTracker) track(c net.Conn, state http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch state {
	case http.StateClosed, http.StateHijacked:
		delete(t.conns, c)
	case http.StateNew:
		t.conns[c] = connState{state: state, since: time.Now()}
	default: // only a new connection's age is ever asked for
		t.conns[c] = connState{state: state}
	}
}

// open counts connections not closed yet.
func (t *connTracker) open() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}

// closeSilent closes connections that connected at least age ago and have
// not sent a byte of a request since. net/http's Shutdown leaves them for 5s
// before calling them idle. The age keeps a request that is on its way, or
// that a busy server has not read yet, from being reset.
func (t *connTracker) closeSilent(age time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for c, s := range t.conns {
		if s.state == http.StateNew && time.Since(s.since) >= age {
			_ = c.Close()
		}
	}
}
