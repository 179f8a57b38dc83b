// Package natstest starts real in-process NATS JetStream servers for tests:
// single nodes and clusters on random loopback ports with temporary stores.
// Nothing here is a mock; tests talk to nats-server exactly as production does.
package natstest

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Options returns server options for a JetStream node on a random loopback
// port with its store in dir.
func Options(dir string) *server.Options {
	return &server.Options{
		ServerName: "test-" + fmt.Sprint(time.Now().UnixNano()),
		Host:       "127.0.0.1",
		Port:       -1,
		JetStream:  true,
		StoreDir:   dir,
		NoLog:      true,
		NoSigs:     true,
	}
}

// RunServer starts a JetStream server and shuts it down when the test ends.
func RunServer(t testing.TB) *server.Server {
	t.Helper()
	return RunServerWithOptions(t, Options(t.TempDir()))
}

// RunServerWithOptions starts a server with the given options.
func RunServerWithOptions(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("natstest: new server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		t.Fatalf("natstest: server not ready within 10s")
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

// Restart starts a server again on the same port and store, as an operator
// restarting a node would. It shuts old down first unless that already
// happened (a test simulating an outage stops it, checks, then restarts).
func Restart(t testing.TB, old *server.Server, opts *server.Options) *server.Server {
	t.Helper()
	// The port must be read from the client URL: Addr is nil once the
	// server is down.
	u, err := url.Parse(old.ClientURL())
	if err != nil {
		t.Fatalf("natstest: restart: client URL %q: %v", old.ClientURL(), err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil || port <= 0 {
		t.Fatalf("natstest: restart: no port in client URL %q", old.ClientURL())
	}
	old.Shutdown()
	old.WaitForShutdown()
	o := opts.Clone()
	o.Port = port
	return RunServerWithOptions(t, o)
}

// Connect opens a client connection and a JetStream context, closed at the end of the test.
func Connect(t testing.TB, s *server.Server) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("natstest: connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("natstest: jetstream: %v", err)
	}
	return nc, js
}

// RunCluster starts an n-node JetStream cluster on loopback and waits until
// it has a meta leader. Servers are shut down at the end of the test.
func RunCluster(t testing.TB, n int) []*server.Server {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ports[i] = freePort(t)
	}
	routes := ""
	for i, p := range ports {
		if i > 0 {
			routes += ","
		}
		routes += fmt.Sprintf("nats-route://127.0.0.1:%d", p)
	}
	servers := make([]*server.Server, n)
	for i := range n {
		opts := Options(t.TempDir())
		opts.ServerName = fmt.Sprintf("node-%d", i)
		opts.Cluster.Name = "test-cluster"
		opts.Cluster.Host = "127.0.0.1"
		opts.Cluster.Port = ports[i]
		opts.Routes = server.RoutesFromStr(routes)
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatalf("natstest: cluster node %d: %v", i, err)
		}
		go s.Start()
		servers[i] = s
		t.Cleanup(func() {
			s.Shutdown()
			s.WaitForShutdown()
		})
	}
	for i, s := range servers {
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("natstest: cluster node %d not ready", i)
		}
	}
	// Ready once the meta leader counts every node as an online JetStream
	// peer with stats: before that, an R=n placement fails with "no
	// suitable peers".
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, s := range servers {
			if s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) == n {
				return servers
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("natstest: the cluster's JetStream meta leader does not see all %d nodes after 20s", n)
	return nil
}

// ClusterURL joins the client URLs of all nodes, for a client that fails over.
func ClusterURL(servers []*server.Server) string {
	url := ""
	for i, s := range servers {
		if i > 0 {
			url += ","
		}
		url += s.ClientURL()
	}
	return url
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("natstest: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
