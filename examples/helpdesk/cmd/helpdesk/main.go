// Command helpdesk runs nowbridge's reference app alone, against a running
// bridge's NATS server (`bridge dev --app` runs it inside the dev bridge
// instead). It prints the page's address; Ctrl-C stops it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/examples/helpdesk"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "helpdesk:", err)
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("helpdesk", flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsURL := fs.String("nats-url", "nats://127.0.0.1:4222", "the bridge's NATS server (bridge serve's embedded one listens on 127.0.0.1:4222)")
	db := fs.String("db", "helpdesk.db", "the SQLite database holding the tickets (created if missing)")
	listen := fs.String("listen", "127.0.0.1:8082", "the page's address")
	entity := fs.String("entity", "ticket", "the app entity the bridge maps to incident")
	name := fs.String("name", "helpdesk", "prefix of the durable consumers; give each helpdesk database its own")
	verbose := fs.Bool("verbose", false, "log every change sent, version applied and result")
	if err := fs.Parse(args); err != nil {
		return err
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	nc, err := nats.Connect(*natsURL, nats.Name("helpdesk"), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(500*time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from NATS; reconnecting", "err", err)
			}
		}))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", *natsURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	app, err := helpdesk.New(ctx, helpdesk.Config{JS: js, DB: *db, Entity: *entity, Name: *name, Logger: log})
	if err != nil {
		return err
	}
	defer app.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen on %s (another helpdesk running? choose another with --listen): %w", *listen, err)
	}
	fmt.Fprintf(stdout, "Helpdesk: http://%s (tickets in %s, bridge at %s)\n", ln.Addr(), *db, *natsURL)
	return app.Serve(ctx, ln)
}
