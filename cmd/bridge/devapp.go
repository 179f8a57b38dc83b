package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"

	"golang.org/x/sync/errgroup"

	"github.com/nowbridge/nowbridge/examples/helpdesk"
	"github.com/nowbridge/nowbridge/internal/events"
)

// defaultAppListen is where `bridge dev --app` serves the helpdesk: beside
// the bridge (8080), the simulator (8081) and the admin console (8090).
const defaultAppListen = "127.0.0.1:8082"

// startDevApp starts the reference app (examples/helpdesk) beside the dev
// bridge, on the same JetStream, its SQLite database in the data
// directory. It needs incident synced: the helpdesk's tickets are
// incidents.
func startDevApp(ctx context.Context, g *errgroup.Group, st *devStack, o devOptions, logger *slog.Logger, cleanup *cleanups) error {
	if !o.app {
		return nil
	}
	if !slices.Contains(st.tables, "incident") {
		return usageError{fmt.Errorf("--app shows the helpdesk, whose tickets are incidents: add incident to --tables (now %v)", st.tables)}
	}
	app, err := helpdesk.New(ctx, helpdesk.Config{JS: st.js, DB: filepath.Join(st.dataDir, "helpdesk.db"), Entity: events.DefaultEntity, Logger: logger})
	if err != nil {
		return fmt.Errorf("helpdesk: %w", err)
	}
	ln, err := listenOrFree(o.appListen)
	if err != nil {
		_ = app.Close()
		return fmt.Errorf("helpdesk listen %s: %w", o.appListen, err)
	}
	cleanup.add(func() { _ = app.Close() })
	st.appURL = "http://" + ln.Addr().String()
	g.Go(func() error { return app.Serve(ctx, ln) })
	return nil
}

// printApp tells where the helpdesk is and what to try in it.
func printApp(out io.Writer, st *devStack) {
	if st.appURL == "" {
		return
	}
	fmt.Fprintf(out, `
Helpdesk, the reference app (examples/helpdesk): %s
  Open it in a browser. Create a ticket and watch its INC number appear; an incident
  changed in the simulator (the PATCH of step 2) appears or updates on the page; comment
  on a ticket and resolve it there, and ServiceNow resolves the incident. A change
  ServiceNow refuses shows its reason beside the ticket.
`, st.appURL)
}
