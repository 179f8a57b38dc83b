package helpdesk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/nowbridge/nowbridge/sdk/nowbridge"
	"github.com/nowbridge/nowbridge/sdk/wire"
)

// Config is what the helpdesk needs to run.
type Config struct {
	// JS reaches the bridge's JetStream (APP_EVENTS, BRIDGE_APPLY,
	// BRIDGE_RESULTS, created by the bridge at start).
	JS jetstream.JetStream
	// DB is the path of the SQLite database (created if missing).
	DB string
	// Entity is the app entity of the tickets: the mapping's entity of
	// incident, "ticket" by default.
	Entity string
	// Name prefixes the durable consumers on BRIDGE_APPLY and
	// BRIDGE_RESULTS ("helpdesk" by default): two helpdesks with their own
	// databases on one bridge need different names.
	Name   string
	Logger *slog.Logger
}

// Validate reports a missing or invalid setting.
func (c Config) Validate() error {
	switch {
	case c.JS == nil:
		return errors.New("helpdesk: no JetStream connection: connect to the bridge's NATS server (the embedded one listens on 127.0.0.1:4222)")
	case c.DB == "":
		return errors.New("helpdesk: no database path: set the SQLite file the helpdesk keeps its tickets in")
	case c.Entity != "" && !wire.ValidEntity(c.Entity):
		return fmt.Errorf("helpdesk: entity %q is not a lowercase name of letters, digits and _ (the mapping's entity, e.g. ticket)", c.Entity)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Entity == "" {
		c.Entity = wire.DefaultEntity
	}
	if c.Name == "" {
		c.Name = "helpdesk"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// App is the helpdesk: its store, its page and the three loops that keep
// it in sync with the bridge (the outbox publisher, the apply consumer and
// the results follower).
type App struct {
	cfg    Config
	log    *slog.Logger
	store  *Store
	client *nowbridge.Client
	web    *web
	kick   chan struct{}
}

// New opens the helpdesk's database and builds its parts; Run starts them.
func New(ctx context.Context, cfg Config) (*App, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	client, err := nowbridge.New(cfg.JS, nowbridge.Config{Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	store, err := OpenStore(ctx, cfg.DB)
	if err != nil {
		return nil, err
	}
	a := &App{cfg: cfg, log: cfg.Logger, store: store, client: client, kick: make(chan struct{}, 1)}
	if a.web, err = newWeb(store, a.wake, cfg.Logger); err != nil {
		_ = store.Close()
		return nil, fmt.Errorf("helpdesk templates: %w", err)
	}
	return a, nil
}

// Store is the helpdesk's database.
func (a *App) Store() *Store { return a.store }

// Handler serves the helpdesk's page.
func (a *App) Handler() http.Handler { return a.web.handler() }

// Close closes the database, after Run returned.
func (a *App) Close() error { return a.store.Close() }

// wake tells the outbox publisher a change is waiting.
func (a *App) wake() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// Serve serves the page on ln and runs the sync loops until ctx ends.
func (a *App) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn)}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.Run(gctx) })
	g.Go(func() error {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("helpdesk page: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		// Requests in flight get 3s. A connection a browser (or Go's
		// transport) opened ahead and never used counts as active for 5s
		// to Shutdown: it is closed rather than waited for.
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			a.log.Debug("helpdesk page: connections still open at stop closed", "err", err)
			_ = srv.Close()
		}
		return nil
	})
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// Run keeps the helpdesk in sync until ctx ends: it publishes the outbox,
// applies ServiceNow's versions and records the results of its changes.
func (a *App) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.publishLoop(gctx) })
	g.Go(func() error { return a.consumeApply(gctx) })
	g.Go(func() error { return a.followResults(gctx) })
	err := g.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// publishLoop sends the outbox in order. A change leaves the outbox only
// once APP_EVENTS stored it; one sent twice (a crash between the publish
// and the mark) has the same message id and is stored once. A failure is
// retried with a growing pause, and the page shows the change as waiting
// to be sent meanwhile.
func (a *App) publishLoop(ctx context.Context) error {
	const maxPause = 10 * time.Second
	pause := 200 * time.Millisecond
	for {
		err := a.PublishOutbox(ctx)
		wait := 2 * time.Second // a change committed while the kick was missed
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			a.log.Warn("helpdesk changes not sent to the bridge yet; retrying", "err", err, "retry_in", pause)
			wait, pause = pause, min(2*pause, maxPause)
		} else {
			pause = 200 * time.Millisecond
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-a.kick:
		case <-t.C:
		}
		t.Stop()
	}
}

// PublishOutbox publishes every change waiting in the outbox, oldest
// first, and stops at the first failure (a later version must not overtake
// an earlier one).
func (a *App) PublishOutbox(ctx context.Context) error {
	for {
		batch, err := a.store.Outbox(ctx, 100)
		if err != nil || len(batch) == 0 {
			return err
		}
		for _, o := range batch {
			p, err := a.client.Publish(ctx, a.cfg.Entity, o.AppChange)
			if err != nil {
				return fmt.Errorf("send version %d of %s: %w", o.Version, o.ExternalID, err)
			}
			if err := a.store.MarkPublished(ctx, o.Seq); err != nil {
				return err
			}
			a.log.Debug("helpdesk change sent", "external_id", o.ExternalID, "version", o.Version, "seq", p.Seq, "duplicate", p.Duplicate)
		}
	}
}

// consumeApply applies ServiceNow's versions of the helpdesk's entity
// (bridge.apply.<entity>.>) through the SDK: one record at a time, in
// order, the version guard kept in the tickets (Store.Versions), each
// message acknowledged after its transaction committed.
func (a *App) consumeApply(ctx context.Context) error {
	return a.retrying(ctx, "ServiceNow's changes", func() error {
		return a.client.Consume(ctx, a.applyMessage, nowbridge.ConsumeOptions{
			Durable: a.cfg.Name + "-apply", Entities: []string{a.cfg.Entity}, Store: a.store.Versions(), Logger: a.log,
		})
	})
}

// followResults records the results of the helpdesk's changes
// (bridge.result.<entity>.>) with a durable consumer, so none is missed
// while the helpdesk is down.
func (a *App) followResults(ctx context.Context) error {
	return a.retrying(ctx, "the results of its changes", func() error {
		return a.client.Results(ctx, a.recordResult, nowbridge.ResultsOptions{
			Durable: a.cfg.Name + "-results", Entities: []string{a.cfg.Entity}, Logger: a.log,
		})
	})
}

// retrying runs a consumer until ctx ends, starting it again after a
// pause when it stops with an error (the bridge not running yet: its
// streams are missing).
func (a *App) retrying(ctx context.Context, what string, run func() error) error {
	pause := time.Second
	for {
		err := run()
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = errors.New("stopped")
		}
		a.log.Warn("helpdesk cannot follow "+what+" yet (is the bridge running? it creates the streams at start); trying again", "err", err, "retry_in", pause)
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		pause = min(2*pause, 30*time.Second)
	}
}

// applyMessage applies one ServiceNow version; the SDK's consumer calls it
// one record at a time, in order, and acks after it returns nil.
func (a *App) applyMessage(ctx context.Context, m *nowbridge.ApplyMessage) error {
	out, err := a.store.ApplyFromServiceNow(ctx, m.Action, m.AppChange)
	if err != nil {
		return err
	}
	a.log.Debug("ServiceNow version applied", "table", m.Table, "sys_id", m.SysID, "version", m.Version, "external_id", m.ExternalID, "outcome", string(out))
	if out == Imported {
		a.wake() // its link change is in the outbox
	}
	return nil
}

// recordResult stores one result of the helpdesk's changes.
func (a *App) recordResult(ctx context.Context, r *nowbridge.Result) error {
	known, err := a.store.RecordResult(ctx, *r)
	if err != nil {
		return err
	}
	if !known {
		a.log.Debug("result of a ticket this helpdesk does not hold", "external_id", r.ExternalID, "version", r.Version)
		return nil
	}
	level := slog.LevelDebug
	if r.Outcome == wire.OutcomeRejected {
		level = slog.LevelWarn
	}
	a.log.Log(ctx, level, "result of a helpdesk change", "external_id", r.ExternalID, "version", r.Version, "outcome", outcomeText(*r), "number", r.Number)
	return nil
}
