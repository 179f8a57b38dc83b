package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/console"
	"github.com/nowbridge/nowbridge/internal/console/tokens"
	"github.com/nowbridge/nowbridge/internal/status"
	"github.com/nowbridge/nowbridge/internal/trace"
)

// serveConsole is `bridge serve`'s admin console on BRIDGE_ADMIN_LISTEN:
// every replica runs one (each shows the whole cluster's state) and
// samples the status for the console's sparklines and the stream, lag and
// dead-letter gauges, also when the listener is off.
type serveConsole struct {
	c   *console.Console
	ln  net.Listener // nil: no listener (off, or the default address taken)
	cfg config.Config
}

// newConsole binds BRIDGE_ADMIN_LISTEN and builds the console over b's
// state. A taken default address (another bridge on this host, a test
// running several) leaves this replica without a console and says so; an
// address the operator set must be free.
func newConsole(cfg config.Config, js jetstream.JetStream, b *bridge, reg prometheus.Registerer, log *slog.Logger) (*serveConsole, error) {
	set, err := tokens.Parse(cfg.AdminToken.Reveal()) // checked by config.Validate
	if err != nil {
		return nil, fmt.Errorf("BRIDGE_ADMIN_TOKEN: %w", err)
	}
	c, err := console.New(console.Config{
		JS: js, Tables: cfg.Tables, Tokens: set, Replica: status.DefaultID(),
		Trace:      trace.NewStore(js, b.states, b.links),
		Registerer: reg, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	sc := &serveConsole{c: c, cfg: cfg}
	switch cfg.AdminListen {
	case config.AdminOff:
		log.Info("console off (BRIDGE_ADMIN_LISTEN=off)")
	default:
		sc.ln, err = net.Listen("tcp", cfg.AdminListen)
		if err != nil && cfg.AdminListen == config.DefaultAdminListen {
			log.Warn("console not started: its default address is taken (another bridge on this host?); set BRIDGE_ADMIN_LISTEN to a free address, or off",
				"addr", cfg.AdminListen, "err", err.Error())
			return sc, nil
		}
		if err != nil {
			return nil, fmt.Errorf("BRIDGE_ADMIN_LISTEN %s: %w", cfg.AdminListen, err)
		}
	}
	return sc, nil
}

// Run serves the console until ctx ends.
func (s *serveConsole) Run(ctx context.Context) error {
	return s.c.Run(ctx, s.ln, s.cfg.ShutdownTimeout)
}

// Close releases the listener when Run never ran (start-up failed later).
func (s *serveConsole) Close() {
	if s.ln != nil {
		_ = s.ln.Close()
	}
}
