package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/status"
)

func newStatusCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "One screen: streams, consumers, dead letters, last reconcile pass per table, token and breaker of running bridges",
		Long: `status reads everything from NATS: stream and consumer state, BRIDGE_DLQ, the
reconcile pass summaries in bridge_state, and the reports each running
'bridge serve' refreshes there every 10s (OAuth token expiry, circuit breaker).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, nc, js, err := connectTool(cmd.Context(), a, cmd, "bridge status")
			if err != nil {
				return err
			}
			defer nc.Close()
			rep, err := status.Collect(cmd.Context(), js, cfg.Tables)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(a.stdout, rep)
			}
			return rep.WriteText(a.stdout)
		},
	}
	bindToolFlags(cmd.Flags(), "tables")
	cmd.Flags().BoolVar(&asJSON, "json", false, "machine-readable output")
	return cmd
}

// bindToolFlags adds --config, the NATS connection flags and the named
// settings of config.Settings to an operator command.
func bindToolFlags(fs *pflag.FlagSet, names ...string) {
	all := pflag.NewFlagSet("all", pflag.ContinueOnError)
	config.BindFlags(all)
	for _, n := range append([]string{"config", "nats-url", "embedded-nats-listen"}, names...) {
		if f := all.Lookup(n); f != nil && fs.Lookup(n) == nil {
			fs.AddFlag(f)
		}
	}
}

// connectTool loads the configuration and connects an operator command to
// NATS: BRIDGE_NATS_URL, or with it empty the embedded server of a running
// `bridge serve` at BRIDGE_EMBEDDED_NATS_LISTEN.
func connectTool(ctx context.Context, a *app, cmd *cobra.Command, name string) (config.Config, *nats.Conn, jetstream.JetStream, error) {
	cfg, err := config.Load(cmd.Flags(), a.getenv)
	if err != nil {
		return cfg, nil, nil, err
	}
	nc, js, err := connectNATS(ctx, cfg, name)
	return cfg, nc, js, err
}

// connectNATS dials BRIDGE_NATS_URL, or the embedded server of a running
// `bridge serve` when it is empty.
func connectNATS(ctx context.Context, cfg config.Config, name string) (*nats.Conn, jetstream.JetStream, error) {
	url := cfg.NATSURL.Reveal()
	if url == "" {
		host, port, _ := net.SplitHostPort(cfg.EmbeddedNATSListen)
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1"
		}
		addr := net.JoinHostPort(host, port)
		conn, derr := (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, "tcp", addr)
		if derr != nil {
			return nil, nil, fmt.Errorf("no NATS server listens at %s: BRIDGE_NATS_URL is empty, so %s expects the embedded server of a running `bridge serve` there (BRIDGE_EMBEDDED_NATS_LISTEN); start `bridge serve`, or set BRIDGE_NATS_URL to your NATS server", addr, name)
		}
		_ = conn.Close()
		url = "nats://" + addr
	}
	nc, err := broker.Connect(ctx, url, name, nil)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// needStream fails with advice when a stream the command reads is missing.
func needStream(ctx context.Context, js jetstream.JetStream, name string) (jetstream.Stream, error) {
	st, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("stream %s does not exist: start `bridge serve` once against this NATS server (it creates the streams)", name)
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	return st, nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// isTerminal reports whether w is a terminal (progress bars and prompts).
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// newProgress returns a progress bar on stderr when it is a terminal, else nil.
func newProgress(a *app, total int64, desc string) *progressbar.ProgressBar {
	if !isTerminal(a.stderr) {
		return nil
	}
	return progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(a.stderr),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("rec"),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
}

// confirm asks a yes/no question on stdin; --yes skips it.
func confirm(a *app, yes bool, question string) error {
	if yes {
		return nil
	}
	fmt.Fprintf(a.stderr, "%s Type 'yes' to confirm: ", question)
	line, err := bufio.NewReader(a.stdin).ReadString('\n')
	if strings.TrimSpace(line) == "yes" {
		return nil
	}
	if err != nil && !isTerminal(a.stdin) {
		return usageError{errors.New("not confirmed: no answer on stdin (pass --yes in scripts)")}
	}
	return errors.New("not confirmed; nothing was changed")
}

// newStatusReporter is what bridge serve runs so `bridge status` can show
// this process's OAuth token expiry and circuit breaker: a report in
// bridge_state (status.process.<host>-<pid>, refreshed every 10s, 30s TTL).
// sn may be nil when ServiceNow is not configured.
func newStatusReporter(js jetstream.JetStream, sn *snclient.Client, cfg config.Config, owner *syncOwnership, logger *slog.Logger) *status.Reporter {
	host, _ := os.Hostname()
	started := time.Now().UTC()
	return &status.Reporter{
		JS:     js,
		ID:     status.DefaultID(),
		Logger: logger,
		Snapshot: func() status.Process {
			p := status.Process{
				Host: host, PID: os.Getpid(), Version: version, Started: started,
				Extra: map[string]string{
					"tables":             strings.Join(cfg.Tables, ","),
					"applier":            cfg.Applier,
					"reconcile_interval": cfg.ReconcileInterval.String(),
					// The presence scan's schedule (0s: only on --full).
					"delete_scan_interval": cfg.DeleteScanInterval.String(),
				},
			}
			if owner != nil {
				p.Extra["sync_owner"] = strconv.FormatBool(owner.owned.Load())
			}
			if sn != nil {
				p.TokenExpiry = sn.TokenExpiry()
				p.Breaker = sn.BreakerState()
			}
			return p
		},
	}
}
