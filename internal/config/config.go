// Package config loads the bridge's settings from flags, environment variables
// and an optional YAML file (flags beat env, env beats file), with defaults and
// validation. Secrets are wrapped so they never print.
package config

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/secret"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// fieldNameRe is a ServiceNow field (column) name.
var fieldNameRe = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,79}$`)

// Config holds every setting of the bridge (SPEC §4 plus tuning knobs).
type Config struct {
	Listen             string
	NATSURL            secret.String // may embed credentials
	DataDir            string
	EmbeddedNATSListen string
	StreamReplicas     int

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
}

// Default returns the documented defaults.
func Default() Config {
	return Config{
		Listen:             ":8080",
		DataDir:            "./data",
		EmbeddedNATSListen: "127.0.0.1:4222",
		StreamReplicas:     1,
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
	}
}

// Setting describes one configuration name in all three sources.
type Setting struct {
	Key    string // YAML key and flag name (with - instead of _)
	Env    string
	Secret bool
	Usage  string
	set    func(*Config, string) error
	get    func(*Config) string
	// mapSep, when set, lets the YAML file give the setting as a map:
	// each entry becomes key=value (a list value joined with commas), the
	// entries joined with mapSep, which also joins a YAML list.
	mapSep string
}

// yamlMap accepts a YAML map for the setting (see mapSep).
func (s Setting) yamlMap(sep string) Setting {
	s.mapSep = sep
	return s
}

// Flag is the setting's command-line flag name.
func (s Setting) Flag() string { return strings.ReplaceAll(s.Key, "_", "-") }

func str(p func(*Config) *string) (func(*Config, string) error, func(*Config) string) {
	return func(c *Config, v string) error { *p(c) = v; return nil }, func(c *Config) string { return *p(c) }
}

func hidden(p func(*Config) *secret.String) (func(*Config, string) error, func(*Config) string) {
	return func(c *Config, v string) error { *p(c) = secret.String(v); return nil }, func(*Config) string { return "" }
}

func dur(p func(*Config) *time.Duration) (func(*Config, string) error, func(*Config) string) {
	return func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil {
				return fmt.Errorf("not a duration like 30s or 5m: %q", v)
			}
			*p(c) = d
			return nil
		}, func(c *Config) string {
			return p(c).String()
		}
}

func integer[T int | int64](p func(*Config) *T) (func(*Config, string) error, func(*Config) string) {
	return func(c *Config, v string) error {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return fmt.Errorf("not an integer: %q", v)
			}
			*p(c) = T(n)
			return nil
		}, func(c *Config) string {
			return strconv.FormatInt(int64(*p(c)), 10)
		}
}

func float(p func(*Config) *float64) (func(*Config, string) error, func(*Config) string) {
	return func(c *Config, v string) error {
			n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return fmt.Errorf("not a number: %q", v)
			}
			*p(c) = n
			return nil
		}, func(c *Config) string {
			return strconv.FormatFloat(*p(c), 'g', -1, 64)
		}
}

func list(p func(*Config) *[]string) (func(*Config, string) error, func(*Config) string) {
	return func(c *Config, v string) error {
			var out []string
			for _, part := range strings.Split(v, ",") {
				if part = strings.TrimSpace(part); part != "" {
					out = append(out, part)
				}
			}
			*p(c) = out
			return nil
		}, func(c *Config) string {
			return strings.Join(*p(c), ",")
		}
}

// prefixes parses a comma-separated list of addresses (a single host) and
// CIDR ranges.
func prefixes(p func(*Config) *[]netip.Prefix) (func(*Config, string) error, func(*Config) string) {
	return func(c *Config, v string) error {
			var out []netip.Prefix
			for _, part := range strings.Split(v, ",") {
				if part = strings.TrimSpace(part); part == "" {
					continue
				}
				pfx, err := netip.ParsePrefix(part)
				if err != nil {
					addr, aerr := netip.ParseAddr(part)
					if aerr != nil {
						return fmt.Errorf("%q is neither an IP address nor a CIDR range like 10.0.0.0/8", part)
					}
					pfx = netip.PrefixFrom(addr, addr.BitLen())
				}
				out = append(out, pfx.Masked())
			}
			*p(c) = out
			return nil
		}, func(c *Config) string {
			parts := make([]string, len(*p(c)))
			for i, pfx := range *p(c) {
				parts[i] = pfx.String()
			}
			return strings.Join(parts, ",")
		}
}

// knownFields parses table=field,field;table=field (a YAML map of table to
// a list of fields arrives in the same form). A table given twice gets the
// fields of both.
func knownFields(p func(*Config) *map[string][]string) (func(*Config, string) error, func(*Config) string) {
	return func(c *Config, v string) error {
			m := map[string][]string{}
			for _, part := range strings.Split(v, ";") {
				if part = strings.TrimSpace(part); part == "" {
					continue
				}
				table, fields, ok := strings.Cut(part, "=")
				table = strings.TrimSpace(table)
				if !ok || table == "" {
					return fmt.Errorf("want table=field,field;table=field, got %q", part)
				}
				for _, f := range strings.Split(fields, ",") {
					if f = strings.TrimSpace(f); f != "" && !slices.Contains(m[table], f) {
						m[table] = append(m[table], f)
					}
				}
				if len(m[table]) == 0 {
					return fmt.Errorf("table %s lists no fields", table)
				}
			}
			*p(c) = m
			return nil
		}, func(c *Config) string {
			parts := make([]string, 0, len(*p(c)))
			for table, fields := range *p(c) {
				parts = append(parts, table+"="+strings.Join(fields, ","))
			}
			sort.Strings(parts)
			return strings.Join(parts, ";")
		}
}

func setting(key, env, usage string, secretValue bool, fns func() (func(*Config, string) error, func(*Config) string)) Setting {
	s, g := fns()
	return Setting{Key: key, Env: env, Usage: usage, Secret: secretValue, set: s, get: g}
}

// Settings lists every setting with its env name and flag.
func Settings() []Setting {
	return []Setting{
		setting("listen", "BRIDGE_LISTEN", "HTTP listen address", false, func() (func(*Config, string) error, func(*Config) string) {
			return str(func(c *Config) *string { return &c.Listen })
		}),
		setting("nats_url", "BRIDGE_NATS_URL", "NATS server or cluster URL(s); empty starts an embedded JetStream server", true, func() (func(*Config, string) error, func(*Config) string) {
			return hidden(func(c *Config) *secret.String { return &c.NATSURL })
		}),
		setting("data_dir", "BRIDGE_DATA_DIR", "embedded server's store and other local state", false, func() (func(*Config, string) error, func(*Config) string) {
			return str(func(c *Config) *string { return &c.DataDir })
		}),
		setting("embedded_nats_listen", "BRIDGE_EMBEDDED_NATS_LISTEN", "where the embedded NATS server listens", false, func() (func(*Config, string) error, func(*Config) string) {
			return str(func(c *Config) *string { return &c.EmbeddedNATSListen })
		}),
		setting("stream_replicas", "BRIDGE_STREAM_REPLICAS", "JetStream replicas of the bridge's streams and buckets (3 on a cluster)", false, func() (func(*Config, string) error, func(*Config) string) {
			return integer(func(c *Config) *int { return &c.StreamReplicas })
		}),
		setting("sn_instance_url", "BRIDGE_SN_INSTANCE_URL", "ServiceNow instance URL, e.g. https://dev12345.service-now.com", false, func() (func(*Config, string) error, func(*Config) string) {
			return str(func(c *Config) *string { return &c.SNInstanceURL })
		}),
		setting("sn_client_id", "BRIDGE_SN_CLIENT_ID", "OAuth 2.0 client id", false, func() (func(*Config, string) error, func(*Config) string) {
			return str(func(c *Config) *string { return &c.SNClientID })
		}),
		setting("sn_client_secret", "BRIDGE_SN_CLIENT_SECRET", "OAuth 2.0 client secret", true, func() (func(*Config, string) error, func(*Config) string) {
			return hidden(func(c *Config) *secret.String { return &c.SNClientSecret })
		}),
		setting("sn_rate_limit", "BRIDGE_SN_RATE_LIMIT", "cap on requests per second towards ServiceNow, an override (0 = none: the bridge paces itself to the rate limit rules it learns from the instance's answers)", false, func() (func(*Config, string) error, func(*Config) string) {
			return float(func(c *Config) *float64 { return &c.SNRateLimit })
		}),
		setting("sn_known_fields", "BRIDGE_SN_KNOWN_FIELDS", "fields of a table to accept beyond those learned from the mapping, a record and sys_dictionary (when readable), e.g. incident=number,state,u_code;problem=number (YAML: a map of table to a list of fields)", false, func() (func(*Config, string) error, func(*Config) string) {
			return knownFields(func(c *Config) *map[string][]string { return &c.SNKnownFields })
		}).yamlMap(";"),
		setting("webhook_secrets", "BRIDGE_WEBHOOK_SECRETS", "comma-separated whsec_ secrets (first signs, all verify)", true, func() (func(*Config, string) error, func(*Config) string) {
			return hidden(func(c *Config) *secret.String { return &c.WebhookSecrets })
		}),
		setting("webhook_tolerance", "BRIDGE_WEBHOOK_TOLERANCE", "allowed webhook-timestamp skew", false, func() (func(*Config, string) error, func(*Config) string) {
			return dur(func(c *Config) *time.Duration { return &c.WebhookTolerance })
		}),
		setting("max_body_bytes", "BRIDGE_MAX_BODY_BYTES", "largest webhook body accepted", false, func() (func(*Config, string) error, func(*Config) string) {
			return integer(func(c *Config) *int64 { return &c.MaxBodyBytes })
		}),
		setting("publish_timeout", "BRIDGE_PUBLISH_TIMEOUT", "how long a webhook waits for JetStream acks before answering 503", false, func() (func(*Config, string) error, func(*Config) string) {
			return dur(func(c *Config) *time.Duration { return &c.PublishTimeout })
		}),
		setting("max_connections", "BRIDGE_MAX_CONNECTIONS", "most HTTP connections open at once on BRIDGE_LISTEN; further clients wait in the listen queue until one closes", false, func() (func(*Config, string) error, func(*Config) string) {
			return integer(func(c *Config) *int { return &c.MaxConnections })
		}),
		setting("read_header_timeout", "BRIDGE_READ_HEADER_TIMEOUT", "how long a client may take to send a request's headers before its connection is closed", false, func() (func(*Config, string) error, func(*Config) string) {
			return dur(func(c *Config) *time.Duration { return &c.ReadHeaderTimeout })
		}),
		setting("read_timeout", "BRIDGE_READ_TIMEOUT", "how long a client may take to send a whole request, headers and body, before its connection is closed", false, func() (func(*Config, string) error, func(*Config) string) {
			return dur(func(c *Config) *time.Duration { return &c.ReadTimeout })
		}),
		setting("idle_timeout", "BRIDGE_IDLE_TIMEOUT", "how long a kept-alive connection may wait for its next request before it is closed", false, func() (func(*Config, string) error, func(*Config) string) {
			return dur(func(c *Config) *time.Duration { return &c.IdleTimeout })
		}),
		setting("drain_grace", "BRIDGE_DRAIN_GRACE", "at shutdown, how long the receiver keeps answering with /readyz 503 and Connection: close before it stops accepting (ends early once no connection is open; part of BRIDGE_SHUTDOWN_TIMEOUT; 0: no drain)", false, func() (func(*Config, string) error, func(*Config) string) {
			return dur(func(c *Config) *time.Duration { return &c.DrainGrace })
		}),
		setting("trusted_proxies", "BRIDGE_TRUSTED_PROXIES", "comma-separated addresses or CIDR ranges of reverse proxies whose X-Forwarded-For names the client in logs (empty: the connection's address; forwarding headers are ignored)", false, func() (func(*Config, string) error, func(*Config) string) {
			return prefixes(func(c *Config) *[]netip.Prefix { return &c.TrustedProxies })
		}),
		setting("tables", "BRIDGE_TABLES", "comma-separated ServiceNow tables synced, each with its mapping (shipped: incident, change_request, problem, sc_req_item, sn_hr_core_case)", false, func() (func(*Config, string) error, func(*Config) string) {
			return list(func(c *Config) *[]string { return &c.Tables })
		}),
		setting("reconcile_interval", "BRIDGE_RECONCILE_INTERVAL", "how often reconcile runs; 0 disables", false, func() (func(*Config, string) error, func(*Config) string) {
			return dur(func(c *Config) *time.Duration { return &c.ReconcileInterval })
		}),
		setting("delete_scan_interval", "BRIDGE_DELETE_SCAN_INTERVAL", "how often reconcile finds deletes by presence (every sys_id compared with bridge_state); 0 disables the schedule", false, func() (func(*Config, string) error, func(*Config) string) {
			return dur(func(c *Config) *time.Duration { return &c.DeleteScanInterval })
		}),
		setting("applier", "BRIDGE_APPLIER", "how changes reach the SaaS app: nats or http", false, func() (func(*Config, string) error, func(*Config) string) {
			return str(func(c *Config) *string { return &c.Applier })
		}),
		setting("apply_url", "BRIDGE_APPLY_URL", "target of the HTTP applier", false, func() (func(*Config, string) error, func(*Config) string) {
			return str(func(c *Config) *string { return &c.ApplyURL })
		}),
		setting("apply_secret", "BRIDGE_APPLY_SECRET", "whsec_ secret signing HTTP applier requests (default: the first webhook secret)", true, func() (func(*Config, string) error, func(*Config) string) {
			return hidden(func(c *Config) *secret.String { return &c.ApplySecret })
		}),
		setting("results_url", "BRIDGE_RESULTS_URL", "where each app change's result (created, updated, rejected, ...) is also POSTed, signed like the HTTP applier's requests (empty: results only in the BRIDGE_RESULTS stream)", false, func() (func(*Config, string) error, func(*Config) string) {
			return str(func(c *Config) *string { return &c.ResultsURL })
		}),
		setting("results_max_age", "BRIDGE_RESULTS_MAX_AGE", "how long BRIDGE_RESULTS keeps a result (at least the 1h duplicate window)", false, func() (func(*Config, string) error, func(*Config) string) {
			return dur(func(c *Config) *time.Duration { return &c.ResultsMaxAge })
		}),
		setting("results_max_msgs", "BRIDGE_RESULTS_MAX_MSGS", "most results BRIDGE_RESULTS keeps, the oldest dropped first (0: no limit)", false, func() (func(*Config, string) error, func(*Config) string) {
			return integer(func(c *Config) *int64 { return &c.ResultsMaxMsgs })
		}),
		setting("results_max_bytes", "BRIDGE_RESULTS_MAX_BYTES", "most bytes BRIDGE_RESULTS keeps, the oldest results dropped first (0: no limit)", false, func() (func(*Config, string) error, func(*Config) string) {
			return integer(func(c *Config) *int64 { return &c.ResultsMaxBytes })
		}),
		setting("mapping_dir", "BRIDGE_MAPPING_DIR", "directory of <table>.yaml mappings; a file replaces the shipped mapping of its table (empty: the shipped mappings of BRIDGE_TABLES)", false, func() (func(*Config, string) error, func(*Config) string) {
			return str(func(c *Config) *string { return &c.MappingDir })
		}),
		setting("dedupe_size", "BRIDGE_DEDUPE_SIZE", "entries in the echo-suppression LRU", false, func() (func(*Config, string) error, func(*Config) string) {
			return integer(func(c *Config) *int { return &c.DedupeSize })
		}),
		setting("dedupe_ttl", "BRIDGE_DEDUPE_TTL", "how long a written version is remembered for echo suppression", false, func() (func(*Config, string) error, func(*Config) string) {
			return dur(func(c *Config) *time.Duration { return &c.DedupeTTL })
		}),
		setting("log_format", "BRIDGE_LOG_FORMAT", "json or text", false, func() (func(*Config, string) error, func(*Config) string) {
			return str(func(c *Config) *string { return &c.LogFormat })
		}),
		setting("log_level", "BRIDGE_LOG_LEVEL", "debug, info, warn or error", false, func() (func(*Config, string) error, func(*Config) string) {
			return str(func(c *Config) *string { return &c.LogLevel })
		}),
		setting("writeback_delete", "BRIDGE_WRITEBACK_DELETE", "what an app delete does in ServiceNow, for every table: resolve (set the delete state, with close fields when it closes) or delete; empty: each table's mapping says (delete.mode)", false, func() (func(*Config, string) error, func(*Config) string) {
			return str(func(c *Config) *string { return &c.WritebackDelete })
		}),
		setting("writeback_delete_state", "BRIDGE_WRITEBACK_DELETE_STATE", "state a resolve-mode delete sets: one for every table (7) or per table (incident=7,change_request=4); empty: each table's mapping says (delete.state)", false, func() (func(*Config, string) error, func(*Config) string) {
			return str(func(c *Config) *string { return &c.WritebackDeleteState })
		}),
		setting("close_code", "BRIDGE_CLOSE_CODE", "close code a write that resolves or closes a record carries (empty: chosen from the instance's active choices, Solution provided first); checked against those choices at start", false, func() (func(*Config, string) error, func(*Config) string) {
			return str(func(c *Config) *string { return &c.CloseCode })
		}),
		setting("conflict_policy", "BRIDGE_CONFLICT_POLICY", "default policy for a field changed on both sides: newest_wins, servicenow_wins or saas_wins", false, func() (func(*Config, string) error, func(*Config) string) {
			return str(func(c *Config) *string { return &c.ConflictPolicy })
		}),
		setting("conflict_policies", "BRIDGE_CONFLICT_POLICIES", "per-field overrides, ServiceNow field names: state=servicenow_wins,short_description=saas_wins", false, func() (func(*Config, string) error, func(*Config) string) {
			return func(c *Config, v string) error {
					m := map[string]string{}
					for _, part := range strings.Split(v, ",") {
						if part = strings.TrimSpace(part); part == "" {
							continue
						}
						field, policy, ok := strings.Cut(part, "=")
						if !ok || strings.TrimSpace(field) == "" {
							return fmt.Errorf("want field=policy pairs, got %q", part)
						}
						m[strings.TrimSpace(field)] = strings.TrimSpace(policy)
					}
					c.ConflictPolicies = m
					return nil
				}, func(c *Config) string {
					parts := make([]string, 0, len(c.ConflictPolicies))
					for f, p := range c.ConflictPolicies {
						parts = append(parts, f+"="+p)
					}
					sort.Strings(parts)
					return strings.Join(parts, ",")
				}
		}),
		setting("writeback_blind", "BRIDGE_WRITEBACK_BLIND", "true: skip reading the record before each write (one request per change; ServiceNow changes the bridge has not seen yet are overwritten)", false, func() (func(*Config, string) error, func(*Config) string) {
			return func(c *Config, v string) error {
					b, err := strconv.ParseBool(strings.TrimSpace(v))
					if err != nil {
						return fmt.Errorf("not true or false: %q", v)
					}
					c.WritebackBlind = b
					return nil
				}, func(c *Config) string {
					return strconv.FormatBool(c.WritebackBlind)
				}
		}),
		setting("writeback_workers", "BRIDGE_WRITEBACK_WORKERS", "concurrent ServiceNow writers (one record is always on one worker)", false, func() (func(*Config, string) error, func(*Config) string) {
			return integer(func(c *Config) *int { return &c.WritebackWorkers })
		}),
		setting("writeback_handover_grace", "BRIDGE_WRITEBACK_HANDOVER_GRACE", "an app change stored this soon after the app was handed a version of the record may not include it: its write is not claimed as the app's own, so the app gets the result back (one extra message rather than a silent divergence)", false, func() (func(*Config, string) error, func(*Config) string) {
			return dur(func(c *Config) *time.Duration { return &c.HandOverGrace })
		}),
		setting("shutdown_timeout", "BRIDGE_SHUTDOWN_TIMEOUT", "how long shutdown waits for in-flight work", false, func() (func(*Config, string) error, func(*Config) string) {
			return dur(func(c *Config) *time.Duration { return &c.ShutdownTimeout })
		}),
	}
}

// BindFlags registers a flag for every setting plus --config.
func BindFlags(fs *pflag.FlagSet) {
	def := Default()
	fs.String("config", "", "optional YAML file with settings (keys as the flag names with _; env: BRIDGE_CONFIG)")
	for _, s := range Settings() {
		d := ""
		if !s.Secret {
			d = s.get(&def)
		}
		fs.String(s.Flag(), d, s.Usage+" (env "+s.Env+")")
	}
}

// Load builds the config from defaults, the YAML file, the environment and
// the flags that were set, in that order of precedence (last wins), then
// validates it. Errors name the setting and never contain a secret value.
func Load(fs *pflag.FlagSet, getenv func(string) string) (Config, error) {
	cfg := Default()
	settings := Settings()
	path := getenv("BRIDGE_CONFIG")
	if f := fs.Lookup("config"); f != nil && f.Changed {
		path = f.Value.String()
	}
	if path != "" {
		if err := loadFile(&cfg, path, settings); err != nil {
			return cfg, err
		}
	}
	for _, s := range settings {
		if v := getenv(s.Env); v != "" {
			if err := s.set(&cfg, v); err != nil {
				return cfg, settingErr(s.Env, s, err)
			}
		}
		if s.Secret {
			if file := getenv(s.Env + "_FILE"); file != "" {
				b, err := os.ReadFile(file)
				if err != nil {
					return cfg, fmt.Errorf("%s_FILE: cannot read %s: %v", s.Env, file, errors.Unwrap(err))
				}
				if err := s.set(&cfg, strings.TrimSpace(string(b))); err != nil {
					return cfg, settingErr(s.Env+"_FILE", s, err)
				}
			}
		}
		if f := fs.Lookup(s.Flag()); f != nil && f.Changed {
			if err := s.set(&cfg, f.Value.String()); err != nil {
				return cfg, settingErr("--"+s.Flag(), s, err)
			}
		}
	}
	return cfg, cfg.Validate()
}

func settingErr(source string, s Setting, err error) error {
	if s.Secret {
		return fmt.Errorf("%s: invalid value", source)
	}
	return fmt.Errorf("%s: %v", source, err)
}

func loadFile(cfg *Config, path string, settings []Setting) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %v", err)
	}
	var raw map[string]yaml.Node
	if err := yaml.Unmarshal(b, &raw); err != nil {
		// yaml's own message spans lines ("unmarshal errors:\n  line 1: ..."):
		// keep the one-line error every start-up failure has.
		msg := strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "yaml: unmarshal errors:", "")), " ")
		if strings.Contains(msg, "cannot unmarshal") {
			msg += " (the file must be a mapping of setting: value)"
		}
		return fmt.Errorf("config file %s: %s", path, msg)
	}
	byKey := make(map[string]Setting, len(settings))
	for _, s := range settings {
		byKey[s.Key] = s
		if s.Secret {
			byKey[s.Key+"_file"] = s
		}
	}
	for key, node := range raw {
		s, ok := byKey[key]
		if !ok {
			return fmt.Errorf("config file %s line %d: unknown setting %q", path, node.Line, key)
		}
		var value string
		switch node.Kind {
		case yaml.ScalarNode:
			value = node.Value
		case yaml.SequenceNode:
			parts := make([]string, 0, len(node.Content))
			for _, c := range node.Content {
				parts = append(parts, c.Value)
			}
			value = strings.Join(parts, cmp.Or(s.mapSep, ","))
		case yaml.MappingNode:
			if s.mapSep == "" {
				return fmt.Errorf("config file %s line %d: %s must be a value or a list", path, node.Line, key)
			}
			var err error
			if value, err = yamlMapValue(&node, s.mapSep); err != nil {
				return fmt.Errorf("config file %s line %d: %s: %v", path, node.Line, key, err)
			}
		default:
			return fmt.Errorf("config file %s line %d: %s must be a value or a list", path, node.Line, key)
		}
		if strings.HasSuffix(key, "_file") {
			b, err := os.ReadFile(value)
			if err != nil {
				return fmt.Errorf("config file %s line %d: %s: %v", path, node.Line, key, errors.Unwrap(err))
			}
			value = strings.TrimSpace(string(b))
		}
		if err := s.set(cfg, value); err != nil {
			return settingErr(fmt.Sprintf("config file %s line %d: %s", path, node.Line, key), s, err)
		}
	}
	return nil
}

// yamlMapValue renders a YAML map as key=value entries joined with sep, a
// list value as its items joined with commas.
func yamlMapValue(node *yaml.Node, sep string) (string, error) {
	parts := make([]string, 0, len(node.Content)/2)
	for i := 0; i+1 < len(node.Content); i += 2 {
		k, v := node.Content[i], node.Content[i+1]
		var vals []string
		switch v.Kind {
		case yaml.ScalarNode:
			vals = []string{v.Value}
		case yaml.SequenceNode:
			for _, c := range v.Content {
				if c.Kind != yaml.ScalarNode {
					return "", fmt.Errorf("line %d: %s: want a list of names", c.Line, k.Value)
				}
				vals = append(vals, c.Value)
			}
		default:
			return "", fmt.Errorf("line %d: %s: want a value or a list", v.Line, k.Value)
		}
		parts = append(parts, k.Value+"="+strings.Join(vals, ","))
	}
	return strings.Join(parts, sep), nil
}

// Validate checks values and their combinations.
func (c *Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("BRIDGE_LISTEN: %q is not host:port", c.Listen)
	}
	if c.NATSURL == "" {
		if _, _, err := net.SplitHostPort(c.EmbeddedNATSListen); err != nil {
			return fmt.Errorf("BRIDGE_EMBEDDED_NATS_LISTEN: %q is not host:port", c.EmbeddedNATSListen)
		}
		if c.DataDir == "" {
			return errors.New("BRIDGE_DATA_DIR: must be set for the embedded NATS server")
		}
	}
	if c.StreamReplicas < 1 || c.StreamReplicas > 5 {
		return fmt.Errorf("BRIDGE_STREAM_REPLICAS: must be 1 to 5, got %d", c.StreamReplicas)
	}
	if len(c.Tables) == 0 {
		return errors.New("BRIDGE_TABLES: at least one table is required")
	}
	for _, t := range c.Tables {
		if !events.ValidTable(t) {
			return fmt.Errorf("BRIDGE_TABLES: %q is not a ServiceNow table name", t)
		}
	}
	if c.SNInstanceURL != "" {
		u, err := url.Parse(c.SNInstanceURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("BRIDGE_SN_INSTANCE_URL: %q is not an http(s) URL", c.SNInstanceURL)
		}
	}
	for table, fields := range c.SNKnownFields {
		if !events.ValidTable(table) {
			return fmt.Errorf("BRIDGE_SN_KNOWN_FIELDS: %q is not a ServiceNow table name", table)
		}
		for _, f := range fields {
			if !fieldNameRe.MatchString(f) {
				return fmt.Errorf("BRIDGE_SN_KNOWN_FIELDS: %s: %q is not a ServiceNow field name (lowercase letters, digits and _, e.g. u_code)", table, f)
			}
		}
	}
	if c.WebhookSecrets != "" {
		if _, err := webhook.ParseSecrets(c.WebhookSecrets.Reveal()); err != nil {
			return fmt.Errorf("BRIDGE_WEBHOOK_SECRETS: %v", err)
		}
	}
	if c.ApplySecret != "" {
		if _, err := webhook.ParseSecret(c.ApplySecret.Reveal()); err != nil {
			return fmt.Errorf("BRIDGE_APPLY_SECRET: %v", err)
		}
	}
	if c.WebhookTolerance <= 0 {
		return errors.New("BRIDGE_WEBHOOK_TOLERANCE: must be positive")
	}
	if c.MaxBodyBytes < 1024 {
		return fmt.Errorf("BRIDGE_MAX_BODY_BYTES: must be at least 1024, got %d", c.MaxBodyBytes)
	}
	if c.PublishTimeout <= 0 {
		return errors.New("BRIDGE_PUBLISH_TIMEOUT: must be positive")
	}
	if err := c.validateReceiver(); err != nil {
		return err
	}
	if c.ReconcileInterval < 0 {
		return errors.New("BRIDGE_RECONCILE_INTERVAL: must be 0 (off) or positive")
	}
	if c.DeleteScanInterval < 0 {
		return errors.New("BRIDGE_DELETE_SCAN_INTERVAL: must be 0 (off) or positive, e.g. 24h")
	}
	switch c.Applier {
	case "nats":
	case "http":
		u, err := url.Parse(c.ApplyURL)
		if c.ApplyURL == "" || err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return errors.New("BRIDGE_APPLY_URL: an http(s) URL is required when BRIDGE_APPLIER=http")
		}
	default:
		return fmt.Errorf("BRIDGE_APPLIER: must be nats or http, got %q", c.Applier)
	}
	if err := c.validateResults(); err != nil {
		return err
	}
	if c.DedupeSize < 1 {
		return errors.New("BRIDGE_DEDUPE_SIZE: must be at least 1")
	}
	switch c.WritebackDelete {
	case "", "resolve", "delete":
	default:
		return fmt.Errorf("BRIDGE_WRITEBACK_DELETE: must be resolve or delete (or empty: each table's mapping decides), got %q", c.WritebackDelete)
	}
	validPolicy := func(p string) bool { return p == "newest_wins" || p == "servicenow_wins" || p == "saas_wins" }
	if !validPolicy(c.ConflictPolicy) {
		return fmt.Errorf("BRIDGE_CONFLICT_POLICY: must be newest_wins, servicenow_wins or saas_wins, got %q", c.ConflictPolicy)
	}
	for field, p := range c.ConflictPolicies {
		if !validPolicy(p) {
			return fmt.Errorf("BRIDGE_CONFLICT_POLICIES: %s=%s: policy must be newest_wins, servicenow_wins or saas_wins", field, p)
		}
	}
	if c.HandOverGrace <= 0 || c.HandOverGrace > time.Minute {
		return fmt.Errorf("BRIDGE_WRITEBACK_HANDOVER_GRACE: must be more than 0 and at most 1m, got %s", c.HandOverGrace)
	}
	if c.WritebackWorkers < 1 || c.WritebackWorkers > 256 {
		return fmt.Errorf("BRIDGE_WRITEBACK_WORKERS: must be 1 to 256, got %d", c.WritebackWorkers)
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		return fmt.Errorf("BRIDGE_LOG_FORMAT: must be json or text, got %q", c.LogFormat)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return fmt.Errorf("BRIDGE_LOG_LEVEL: must be debug, info, warn or error, got %q", c.LogLevel)
	}
	return nil
}

// validateReceiver checks the HTTP server's settings and the webhook
// tolerance against SN_EVENTS' duplicate window.
func (c *Config) validateReceiver() error {
	var window time.Duration
	for _, s := range events.Streams(events.StreamOptions{}) {
		if s.Name == events.StreamSN {
			window = s.Duplicates
		}
	}
	if span := webhook.ReplaySpan(c.WebhookTolerance); span >= window {
		return fmt.Errorf("BRIDGE_WEBHOOK_TOLERANCE: %s is too long for the %s stream's duplicate window of %s: a captured webhook "+
			"verifies for up to %s after it first arrived (its timestamp may be that much ahead or behind), so a replay after the window "+
			"would be stored twice; set it below %s", c.WebhookTolerance, events.StreamSN, window, span, window/2)
	}
	if c.MaxConnections < 1 || c.MaxConnections > 1<<20 {
		return fmt.Errorf("BRIDGE_MAX_CONNECTIONS: must be 1 to 1048576, got %d", c.MaxConnections)
	}
	for _, t := range []struct {
		env string
		d   time.Duration
	}{{"BRIDGE_READ_HEADER_TIMEOUT", c.ReadHeaderTimeout}, {"BRIDGE_READ_TIMEOUT", c.ReadTimeout}, {"BRIDGE_IDLE_TIMEOUT", c.IdleTimeout}} {
		if t.d <= 0 {
			return fmt.Errorf("%s: must be positive, got %s", t.env, t.d)
		}
	}
	if c.ReadHeaderTimeout > c.ReadTimeout {
		return fmt.Errorf("BRIDGE_READ_HEADER_TIMEOUT (%s) must not exceed BRIDGE_READ_TIMEOUT (%s), which bounds the headers and the body together",
			c.ReadHeaderTimeout, c.ReadTimeout)
	}
	if c.ShutdownTimeout <= 0 {
		return fmt.Errorf("BRIDGE_SHUTDOWN_TIMEOUT: must be positive, got %s", c.ShutdownTimeout)
	}
	if c.DrainGrace < 0 || c.DrainGrace > c.ShutdownTimeout/2 {
		return fmt.Errorf("BRIDGE_DRAIN_GRACE: must be 0 (no drain) up to half of BRIDGE_SHUTDOWN_TIMEOUT (%s), which also covers the requests still running, got %s",
			c.ShutdownTimeout, c.DrainGrace)
	}
	return nil
}

// validateResults checks the results settings: the URL, and limits that
// keep a result at least as long as the stream de-duplicates it (a
// redelivered app change must find its result's id still known).
func (c *Config) validateResults() error {
	if c.ResultsURL != "" {
		u, err := url.Parse(c.ResultsURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("BRIDGE_RESULTS_URL: %q is not an http(s) URL", c.ResultsURL)
		}
	}
	var window time.Duration
	for _, s := range events.Streams(events.StreamOptions{}) {
		if s.Name == events.StreamResults {
			window = s.Duplicates
		}
	}
	if c.ResultsMaxAge < window {
		return fmt.Errorf("BRIDGE_RESULTS_MAX_AGE: %s is shorter than %s' %s duplicate window, which keeps a redelivered app change from publishing a second result; set at least %s",
			c.ResultsMaxAge, events.StreamResults, window, window)
	}
	if c.ResultsMaxMsgs < 0 {
		return fmt.Errorf("BRIDGE_RESULTS_MAX_MSGS: must be 0 (no limit) or positive, got %d", c.ResultsMaxMsgs)
	}
	if c.ResultsMaxBytes < 0 {
		return fmt.Errorf("BRIDGE_RESULTS_MAX_BYTES: must be 0 (no limit) or positive, got %d", c.ResultsMaxBytes)
	}
	return nil
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
