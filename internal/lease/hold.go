package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Holding runs work only while this process holds a lease, and competes for
// the lease again when it is lost: an active replica and standbys, without
// a coordinator besides JetStream.
type Holding struct {
	JS     jetstream.JetStream
	KV     jetstream.KeyValue // bridge_state
	Key    string
	Holder string        // default DefaultHolder()
	TTL    time.Duration // how long a dead holder keeps the lease; default 10s, at least 1s (JetStream's smallest message TTL)
	// Poll is how often a standby tries to take the lease (with jitter);
	// default TTL/10, at most 1s, so a released lease moves within it.
	Poll   time.Duration
	Name   string // the lease, for logs (default "lease"): "<Name> acquired", "<Name> lost", "<Name> released"
	What   string // the work, for logs ("apply and writeback")
	Logger *slog.Logger
	// Owned, when set, is told each change: true once acquired, false
	// once the work stopped.
	Owned func(bool)
}

// errLost cancels the work when the lease cannot be kept.
var errLost = errors.New("lease lost")

func (h *Holding) withDefaults() {
	if h.Holder == "" {
		h.Holder = DefaultHolder()
	}
	if h.TTL <= 0 {
		h.TTL = 10 * time.Second
	}
	// JetStream keeps a message TTL in whole seconds (1s at least):
	// renew and give up by the TTL the server applies.
	h.TTL = max(h.TTL.Truncate(time.Second), time.Second)
	if h.Poll <= 0 {
		h.Poll = min(h.TTL/10, time.Second)
	}
	if h.Name == "" {
		h.Name = "lease"
	}
	if h.Logger == nil {
		h.Logger = slog.New(slog.DiscardHandler)
	}
	if h.Owned == nil {
		h.Owned = func(bool) {}
	}
}

// Run competes for the lease until ctx ends. While holding it, it runs work
// with a context that is cancelled when the lease is lost (then it competes
// again) or ctx ends (then it releases the lease, so a standby takes over at
// once, and returns nil). An error work returns by itself ends Run with it.
func (h *Holding) Run(ctx context.Context, work func(context.Context) error) error {
	h.withDefaults()
	log := h.Logger.With("lease", h.Key, "holder", h.Holder)
	for {
		l, err := Acquire(ctx, h.JS, h.KV, h.Key, h.Holder, h.TTL)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !errors.Is(err, ErrHeld) {
				log.Warn("cannot take the lease; trying again", "err", err)
			}
			if !sleep(ctx, h.Poll/2+rand.N(h.Poll)) {
				return nil
			}
			continue
		}
		log.Info(h.Name+" acquired: this replica runs "+h.What, "ttl", h.TTL)
		h.Owned(true)
		err = h.hold(ctx, l, work)
		h.Owned(false)
		switch {
		case errors.Is(err, errLost):
			log.Warn(h.Name+" lost: "+h.What+" stopped here; another replica takes over", "err", err)
			continue
		case ctx.Err() != nil:
			bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			rerr := l.Release(bg)
			cancel()
			if rerr != nil {
				log.Info(h.Name+" released by expiry (the lease could not be deleted)", "err", rerr)
			} else {
				log.Info(h.Name + " released")
			}
			return nil
		default:
			bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_ = l.Release(bg)
			cancel()
			if err == nil {
				err = fmt.Errorf("%s stopped by itself", h.What)
			}
			return err
		}
	}
}

// hold runs work while renewing l every quarter of its TTL. A renewal that
// finds the lease taken, or no successful renewal for 3/4 of the TTL (the
// server lets it expire at the TTL, and a standby may take it then), cancels
// the work with errLost.
func (h *Holding) hold(ctx context.Context, l *Lease, work func(context.Context) error) error {
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		tick := time.NewTicker(h.TTL / 4)
		defer tick.Stop()
		last := time.Now()
		expire := time.NewTimer(h.TTL * 3 / 4)
		defer expire.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-expire.C:
				cancel(fmt.Errorf("%w: not renewed for %s", errLost, time.Since(last).Round(time.Millisecond)))
				return
			case <-tick.C:
			}
			rctx, rcancel := context.WithTimeout(wctx, h.TTL/4)
			err := l.Renew(rctx)
			rcancel()
			switch {
			case err == nil:
				last = time.Now()
				expire.Reset(h.TTL * 3 / 4)
			case errors.Is(err, ErrHeld):
				cancel(fmt.Errorf("%w: %w", errLost, err))
				return
			default:
				h.Logger.Warn("lease not renewed; trying again before it expires", "lease", h.Key, "err", err)
			}
		}
	}()
	err := work(wctx)
	lost := context.Cause(wctx)
	cancel(nil)
	<-renewed
	if errors.Is(lost, errLost) {
		return lost
	}
	return err
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
