package apply

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/state"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// Options are the parts `bridge serve` shares with the apply pipeline.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	LinkWriter LinkWriter      // optional: correlation_id write-back
	Applied    AppliedRecorder // optional: the echo-suppression cache
	// Mapping overrides loading c.MappingDir (the writeback can share one Set).
	Mapping *mapping.Set
}

// LoadMapping loads the mapping of each synced table (BRIDGE_TABLES): its
// file in dir (BRIDGE_MAPPING_DIR, "" for none), else the one nowbridge
// ships. A broken file is an error naming its line.
func LoadMapping(dir string, tables []string, log *slog.Logger) (*mapping.Set, error) {
	if dir == "" {
		return mapping.Load(nil, tables, log)
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("BRIDGE_MAPPING_DIR %s: not a readable directory", dir)
	}
	return mapping.Load(os.DirFS(dir), tables, log)
}

// FromConfig builds the apply pipeline from the bridge's configuration:
// the mapping files, bridge_state and bridge_links (which must exist:
// broker.EnsureAll), and the configured applier (BRIDGE_APPLIER). Every
// configured table must have a mapping.
func FromConfig(ctx context.Context, c config.Config, js jetstream.JetStream, o Options) (*Runner, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := o.Mapping
	if m == nil {
		var err error
		if m, err = LoadMapping(c.MappingDir, c.Tables, log); err != nil {
			return nil, err
		}
	}
	for _, t := range c.Tables {
		if _, ok := m.ForTable(t); !ok {
			return nil, fmt.Errorf("table %s (BRIDGE_TABLES) has no mapping: add %s.yaml to BRIDGE_MAPPING_DIR (see deploy/mapping/incident.yaml)", t, t)
		}
	}
	states, links, err := state.Open(ctx, js)
	if err != nil {
		return nil, err
	}
	cfg := Config{
		JS: js, Mapping: m, States: states, Links: links, LinkWriter: o.LinkWriter, Applied: o.Applied,
		Logger: log, Registerer: o.Registerer,
	}
	switch c.Applier {
	case "", "nats":
		cfg.Applier = &NATSApplier{JS: js}
	case "http":
		raw := c.ApplySecret.Reveal()
		if raw == "" {
			secrets, err := webhook.ParseSecrets(c.WebhookSecrets.Reveal())
			if err != nil {
				return nil, fmt.Errorf("BRIDGE_WEBHOOK_SECRETS: %w", err)
			}
			if len(secrets) == 0 {
				return nil, fmt.Errorf("the HTTP applier signs its requests: set BRIDGE_APPLY_SECRET or BRIDGE_WEBHOOK_SECRETS")
			}
			cfg.Applier = NewHTTPApplier(c.ApplyURL, secrets[0], 0, cfg.withDefaults().Workers)
			break
		}
		secret, err := webhook.ParseSecret(raw)
		if err != nil {
			return nil, fmt.Errorf("BRIDGE_APPLY_SECRET: %w", err)
		}
		cfg.Applier = NewHTTPApplier(c.ApplyURL, secret, 0, cfg.withDefaults().Workers)
	default:
		return nil, fmt.Errorf("BRIDGE_APPLIER: must be nats or http, got %q", c.Applier)
	}
	return New(cfg)
}
