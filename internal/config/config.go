// Package config loads the bridge's settings from flags, environment variables
// and an optional YAML file (flags beat env, env beats file), with defaults and
// validation. Secrets are wrapped so they never print.
package config

import (
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/secret"
)

// Config holds every setting of the bridge (SPEC §4 plus tuning knobs).
type Config struct {
	Listen             string
	NATSURL            secret.String // may embed credentials
	DataDir            string
	EmbeddedNATSListen string
	StreamReplicas     int
	SyncLeaseTTL       time.Duration // how long a dead replica keeps the sync lease (apply, writeback, reconcile)

	// The console (issue 15): its own listener, never the webhook port
	// ("off": none), and the bearer tokens it asks for (required when the
	// listener is not loopback; see internal/console/tokens).
	AdminListen string
	AdminToken  secret.String

	SNInstanceURL  string
	SNClientID     string
	SNClientSecret secret.String
	SNRateLimit    float64 // cap on requests/s towards ServiceNow; 0 = none (the client paces itself to the rules it learns)
	// SNKnownFields lists, per table, fields the bridge may use beyond those
	// it learns (from the mapping, a record and sys_dictionary where readable).
	SNKnownFields map[string][]string

	WebhookSecrets   secret.String // comma-separated whsec_ list
	WebhookTolerance time.Duration
	MaxBodyBytes     int64
	PublishTimeout   time.Duration

	// The receiver's HTTP server (issue 16): a connection cap, timeouts
	// that cut slow or stalled clients loose, the drain before shutdown,
	// and the proxies whose X-Forwarded-For names the client in logs.
	MaxConnections    int
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	IdleTimeout       time.Duration
	DrainGrace        time.Duration // 0: no drain
	TrustedProxies    []netip.Prefix

	Tables            []string
	ReconcileInterval time.Duration
	Applier           string
	ApplyURL          string
	ApplySecret       secret.String // whsec_ secret signing HTTP applier requests
	MappingDir        string
	DedupeSize        int
	DedupeTTL         time.Duration
	LogFormat         string
	LogLevel          string
	ShutdownTimeout   time.Duration

	// Results of app changes (issue 12). ResultsURL receives a signed POST
	// of each (signed like the HTTP applier's requests); "" leaves them in
	// BRIDGE_RESULTS alone. The limits are BRIDGE_RESULTS' (0: no limit on
	// count or size).
	ResultsURL      string
	ResultsMaxAge   time.Duration
	ResultsMaxMsgs  int64
	ResultsMaxBytes int64

	// DeleteScanInterval is how often reconcile runs the presence scan
	// (every sys_id of each table compared with bridge_state); 0 disables
	// the schedule (bridge reconcile --once --full still runs it).
	DeleteScanInterval time.Duration

	// Writeback (SaaS -> ServiceNow) behaviour.
	WritebackDelete      string            // resolve or delete for every table; "" each mapping's delete.mode
	WritebackDeleteState string            // "7" or "incident=7,change_request=4"; "" each mapping's delete.state
	CloseCode            string            // overrides the close code chosen from the instance's choices
	ConflictPolicy       string            // default per-field policy: newest_wins, servicenow_wins, saas_wins
	ConflictPolicies     map[string]string // ServiceNow field -> policy
	WritebackBlind       bool              // skip the read before each write
	WritebackWorkers     int
	HandOverGrace        time.Duration // app changes this soon after a hand-over are not claimed
	WritebackAckWait     time.Duration // how long JetStream waits before handing an unacked change (a crashed bridge's) to another

	// Attachments (issue 13): the largest file synced either way (0: no
	// attachment is synced), and the content types synced: AttachmentTypesAllow
	// (empty: all) less AttachmentTypesDeny, each "type/subtype" or "type/*".
	AttachmentMaxBytes   int64
	AttachmentTypesAllow []string
	AttachmentTypesDeny  []string
}

// DefaultAttachmentMaxBytes is ServiceNow's own default limit
// (com.glide.attachment.max_size, 1024 MB).
const DefaultAttachmentMaxBytes = 1024 << 20

// DefaultAdminListen is where the console listens unless told otherwise:
// loopback, reached through a tunnel (8081 is the simulator's).
const DefaultAdminListen = "127.0.0.1:8090"

// AdminOff is the BRIDGE_ADMIN_LISTEN value that runs no console.
const AdminOff = "off"

// Default returns the documented defaults.
func Default() Config {
	return Config{
		Listen:             ":8080",
		DataDir:            "./data",
		EmbeddedNATSListen: "127.0.0.1:4222",
		StreamReplicas:     1,
		SyncLeaseTTL:       10 * time.Second,
		AdminListen:        DefaultAdminListen,
		WebhookTolerance:   5 * time.Minute,
		MaxBodyBytes:       1 << 20,
		PublishTimeout:     5 * time.Second,
		MaxConnections:     1024,
		ReadHeaderTimeout:  5 * time.Second,
		ReadTimeout:        30 * time.Second,
		IdleTimeout:        60 * time.Second,
		DrainGrace:         2 * time.Second,
		Tables:             []string{"incident"},
		ReconcileInterval:  5 * time.Minute,
		DeleteScanInterval: 24 * time.Hour,
		Applier:            "nats",
		ResultsMaxAge:      events.DefaultResultsMaxAge,
		DedupeSize:         100_000,
		DedupeTTL:          time.Hour,
		LogFormat:          "json",
		LogLevel:           "info",
		ShutdownTimeout:    20 * time.Second,
		ConflictPolicy:     "newest_wins",
		WritebackWorkers:   8,
		HandOverGrace:      time.Second,
		WritebackAckWait:   time.Minute,
		AttachmentMaxBytes: DefaultAttachmentMaxBytes,
	}
}

// StreamOptions are the stream definitions this configuration asks for:
// the replicas and BRIDGE_RESULTS' limits.
func (c *Config) StreamOptions() events.StreamOptions {
	return events.StreamOptions{
		Replicas:        c.StreamReplicas,
		ResultsMaxAge:   c.ResultsMaxAge,
		ResultsMaxMsgs:  c.ResultsMaxMsgs,
		ResultsMaxBytes: c.ResultsMaxBytes,
	}
}

// RequireServiceNow checks the settings needed to talk to ServiceNow.
func (c *Config) RequireServiceNow() error {
	switch {
	case c.SNInstanceURL == "":
		return errors.New("BRIDGE_SN_INSTANCE_URL: required (e.g. https://dev12345.service-now.com)")
	case c.SNClientID == "":
		return errors.New("BRIDGE_SN_CLIENT_ID: required (the OAuth client id from the Application Registry)")
	case c.SNClientSecret == "":
		return errors.New("BRIDGE_SN_CLIENT_SECRET: required (or BRIDGE_SN_CLIENT_SECRET_FILE)")
	}
	return nil
}

// Logger builds the slog logger the config asks for.
func (c *Config) Logger(w interface{ Write([]byte) (int, error) }) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
