package config

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/nowbridge/nowbridge/internal/secret"
)

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

// Flag is the setting's command-line flag name.
func (s Setting) Flag() string { return strings.ReplaceAll(s.Key, "_", "-") }

// yamlMap accepts a YAML map for the setting (see mapSep).
func (s Setting) yamlMap(sep string) Setting {
	s.mapSep = sep
	return s
}

func setting(key, env, usage string, b binding) Setting {
	return Setting{Key: key, Env: env, Usage: usage, Secret: b.secret, set: b.set, get: b.get}
}

// Settings lists every setting with its env name and flag, grouped by the
// part of the bridge it configures.
func Settings() []Setting {
	return slices.Concat(
		serverSettings(),
		consoleSettings(),
		serviceNowSettings(),
		receiverSettings(),
		syncSettings(),
		appSettings(),
		writebackSettings(),
		attachmentSettings(),
	)
}

// serverSettings are where the bridge listens, its NATS server and streams, its logs and its shutdown.
func serverSettings() []Setting {
	return []Setting{
		setting("listen", "BRIDGE_LISTEN", "HTTP listen address",
			str(func(c *Config) *string { return &c.Listen })),
		setting("nats_url", "BRIDGE_NATS_URL", "NATS server or cluster URL(s); empty starts an embedded JetStream server",
			hidden(func(c *Config) *secret.String { return &c.NATSURL })),
		setting("data_dir", "BRIDGE_DATA_DIR", "embedded server's store and other local state",
			str(func(c *Config) *string { return &c.DataDir })),
		setting("embedded_nats_listen", "BRIDGE_EMBEDDED_NATS_LISTEN", "where the embedded NATS server listens",
			str(func(c *Config) *string { return &c.EmbeddedNATSListen })),
		setting("stream_replicas", "BRIDGE_STREAM_REPLICAS", "JetStream replicas of the bridge's streams and buckets (3 on a cluster)",
			integer(func(c *Config) *int { return &c.StreamReplicas })),
		setting("sync_lease_ttl", "BRIDGE_SYNC_LEASE_TTL", "with several replicas, one runs apply, writeback, results delivery and reconcile, under a lease in bridge_state: how long a replica that died keeps it before another takes over (a clean stop hands it over at once); at least 2s",
			dur(func(c *Config) *time.Duration { return &c.SyncLeaseTTL })),
		setting("log_format", "BRIDGE_LOG_FORMAT", "json or text",
			str(func(c *Config) *string { return &c.LogFormat })),
		setting("log_level", "BRIDGE_LOG_LEVEL", "debug, info, warn or error",
			str(func(c *Config) *string { return &c.LogLevel })),
		setting("shutdown_timeout", "BRIDGE_SHUTDOWN_TIMEOUT", "how long shutdown waits for in-flight work",
			dur(func(c *Config) *time.Duration { return &c.ShutdownTimeout })),
	}
}

// consoleSettings are the console's listener and its tokens.
func consoleSettings() []Setting {
	return []Setting{
		setting("admin_listen", "BRIDGE_ADMIN_LISTEN", "the console's listen address (overview, dead letters, record trace), never BRIDGE_LISTEN's port; off: no console. Not loopback: BRIDGE_ADMIN_TOKEN is required",
			str(func(c *Config) *string { return &c.AdminListen })),
		setting("admin_token", "BRIDGE_ADMIN_TOKEN", "comma-separated bearer tokens of the console, each a token or name:token (the name is logged with each action), at least 16 characters; required when BRIDGE_ADMIN_LISTEN is not loopback",
			hidden(func(c *Config) *secret.String { return &c.AdminToken })),
	}
}

// serviceNowSettings are the instance, its OAuth client and what the client may send it.
func serviceNowSettings() []Setting {
	return []Setting{
		setting("sn_instance_url", "BRIDGE_SN_INSTANCE_URL", "ServiceNow instance URL, e.g. https://dev12345.service-now.com",
			str(func(c *Config) *string { return &c.SNInstanceURL })),
		setting("sn_client_id", "BRIDGE_SN_CLIENT_ID", "OAuth 2.0 client id",
			str(func(c *Config) *string { return &c.SNClientID })),
		setting("sn_client_secret", "BRIDGE_SN_CLIENT_SECRET", "OAuth 2.0 client secret",
			hidden(func(c *Config) *secret.String { return &c.SNClientSecret })),
		setting("sn_rate_limit", "BRIDGE_SN_RATE_LIMIT", "cap on requests per second towards ServiceNow, an override (0 = none: the bridge paces itself to the rate limit rules it learns from the instance's answers)",
			float(func(c *Config) *float64 { return &c.SNRateLimit })),
		setting("sn_known_fields", "BRIDGE_SN_KNOWN_FIELDS", "fields of a table to accept beyond those learned from the mapping, a record and sys_dictionary (when readable), e.g. incident=number,state,u_code;problem=number (YAML: a map of table to a list of fields)",
			knownFields(func(c *Config) *map[string][]string { return &c.SNKnownFields })).yamlMap(";"),
	}
}

// receiverSettings are the webhook receiver's: signatures, limits and its HTTP server.
func receiverSettings() []Setting {
	return []Setting{
		setting("webhook_secrets", "BRIDGE_WEBHOOK_SECRETS", "comma-separated whsec_ secrets (first signs, all verify)",
			hidden(func(c *Config) *secret.String { return &c.WebhookSecrets })),
		setting("webhook_tolerance", "BRIDGE_WEBHOOK_TOLERANCE", "allowed webhook-timestamp skew",
			dur(func(c *Config) *time.Duration { return &c.WebhookTolerance })),
		setting("max_body_bytes", "BRIDGE_MAX_BODY_BYTES", "largest webhook body accepted",
			integer(func(c *Config) *int64 { return &c.MaxBodyBytes })),
		setting("publish_timeout", "BRIDGE_PUBLISH_TIMEOUT", "how long a webhook waits for JetStream acks before answering 503",
			dur(func(c *Config) *time.Duration { return &c.PublishTimeout })),
		setting("max_connections", "BRIDGE_MAX_CONNECTIONS", "most HTTP connections open at once on BRIDGE_LISTEN; further clients wait in the listen queue until one closes",
			integer(func(c *Config) *int { return &c.MaxConnections })),
		setting("read_header_timeout", "BRIDGE_READ_HEADER_TIMEOUT", "how long a client may take to send a request's headers before its connection is closed",
			dur(func(c *Config) *time.Duration { return &c.ReadHeaderTimeout })),
		setting("read_timeout", "BRIDGE_READ_TIMEOUT", "how long a client may take to send a whole request, headers and body, before its connection is closed",
			dur(func(c *Config) *time.Duration { return &c.ReadTimeout })),
		setting("idle_timeout", "BRIDGE_IDLE_TIMEOUT", "how long a kept-alive connection may wait for its next request before it is closed",
			dur(func(c *Config) *time.Duration { return &c.IdleTimeout })),
		setting("drain_grace", "BRIDGE_DRAIN_GRACE", "at shutdown, how long the receiver keeps answering with /readyz 503 and Connection: close before it stops accepting (ends early once no connection is open; part of BRIDGE_SHUTDOWN_TIMEOUT; 0: no drain)",
			dur(func(c *Config) *time.Duration { return &c.DrainGrace })),
		setting("trusted_proxies", "BRIDGE_TRUSTED_PROXIES", "comma-separated addresses or CIDR ranges of reverse proxies whose X-Forwarded-For names the client in logs (empty: the connection's address; forwarding headers are ignored)",
			prefixes(func(c *Config) *[]netip.Prefix { return &c.TrustedProxies })),
	}
}

// syncSettings are what is synced (tables and their mappings), reconcile's schedule and the echo cache.
func syncSettings() []Setting {
	return []Setting{
		setting("tables", "BRIDGE_TABLES", "comma-separated ServiceNow tables synced, each with its mapping (shipped: incident, change_request, problem, sc_req_item, sn_hr_core_case)",
			list(func(c *Config) *[]string { return &c.Tables })),
		setting("mapping_dir", "BRIDGE_MAPPING_DIR", "directory of <table>.yaml mappings; a file replaces the shipped mapping of its table (empty: the shipped mappings of BRIDGE_TABLES)",
			str(func(c *Config) *string { return &c.MappingDir })),
		setting("reconcile_interval", "BRIDGE_RECONCILE_INTERVAL", "how often reconcile runs; 0 disables",
			dur(func(c *Config) *time.Duration { return &c.ReconcileInterval })),
		setting("delete_scan_interval", "BRIDGE_DELETE_SCAN_INTERVAL", "how often reconcile finds deletes by presence (every sys_id compared with bridge_state); 0 disables the schedule",
			dur(func(c *Config) *time.Duration { return &c.DeleteScanInterval })),
		setting("dedupe_size", "BRIDGE_DEDUPE_SIZE", "entries in the echo-suppression LRU",
			integer(func(c *Config) *int { return &c.DedupeSize })),
		setting("dedupe_ttl", "BRIDGE_DEDUPE_TTL", "how long a written version is remembered for echo suppression",
			dur(func(c *Config) *time.Duration { return &c.DedupeTTL })),
	}
}

// appSettings are how changes reach the SaaS app and how the results of its changes go back.
func appSettings() []Setting {
	return []Setting{
		setting("applier", "BRIDGE_APPLIER", "how changes reach the SaaS app: nats or http",
			str(func(c *Config) *string { return &c.Applier })),
		setting("apply_url", "BRIDGE_APPLY_URL", "target of the HTTP applier",
			str(func(c *Config) *string { return &c.ApplyURL })),
		setting("apply_secret", "BRIDGE_APPLY_SECRET", "whsec_ secret signing HTTP applier requests (default: the first webhook secret)",
			hidden(func(c *Config) *secret.String { return &c.ApplySecret })),
		setting("results_url", "BRIDGE_RESULTS_URL", "where each app change's result (created, updated, rejected, ...) is also POSTed, signed like the HTTP applier's requests (empty: results only in the BRIDGE_RESULTS stream)",
			str(func(c *Config) *string { return &c.ResultsURL })),
		setting("results_max_age", "BRIDGE_RESULTS_MAX_AGE", "how long BRIDGE_RESULTS keeps a result (at least the 1h duplicate window)",
			dur(func(c *Config) *time.Duration { return &c.ResultsMaxAge })),
		setting("results_max_msgs", "BRIDGE_RESULTS_MAX_MSGS", "most results BRIDGE_RESULTS keeps, the oldest dropped first (0: no limit)",
			integer(func(c *Config) *int64 { return &c.ResultsMaxMsgs })),
		setting("results_max_bytes", "BRIDGE_RESULTS_MAX_BYTES", "most bytes BRIDGE_RESULTS keeps, the oldest results dropped first (0: no limit)",
			integer(func(c *Config) *int64 { return &c.ResultsMaxBytes })),
	}
}

// writebackSettings are how the app's changes are written to ServiceNow.
func writebackSettings() []Setting {
	return []Setting{
		setting("writeback_delete", "BRIDGE_WRITEBACK_DELETE", "what an app delete does in ServiceNow, for every table: resolve (set the delete state, with close fields when it closes) or delete; empty: each table's mapping says (delete.mode)",
			str(func(c *Config) *string { return &c.WritebackDelete })),
		setting("writeback_delete_state", "BRIDGE_WRITEBACK_DELETE_STATE", "state a resolve-mode delete sets: one for every table (7) or per table (incident=7,change_request=4); empty: each table's mapping says (delete.state)",
			str(func(c *Config) *string { return &c.WritebackDeleteState })),
		setting("close_code", "BRIDGE_CLOSE_CODE", "close code a write that resolves or closes a record carries (empty: chosen from the instance's active choices, Solution provided first); checked against those choices at start",
			str(func(c *Config) *string { return &c.CloseCode })),
		setting("conflict_policy", "BRIDGE_CONFLICT_POLICY", "default policy for a field changed on both sides: newest_wins, servicenow_wins or saas_wins",
			str(func(c *Config) *string { return &c.ConflictPolicy })),
		setting("conflict_policies", "BRIDGE_CONFLICT_POLICIES", "per-field overrides, ServiceNow field names: state=servicenow_wins,short_description=saas_wins",
			pairs(func(c *Config) *map[string]string { return &c.ConflictPolicies })),
		setting("writeback_blind", "BRIDGE_WRITEBACK_BLIND", "true: skip reading the record before each write (one request per change; ServiceNow changes the bridge has not seen yet are overwritten)",
			boolean(func(c *Config) *bool { return &c.WritebackBlind })),
		setting("writeback_workers", "BRIDGE_WRITEBACK_WORKERS", "concurrent ServiceNow writers (one record is always on one worker)",
			integer(func(c *Config) *int { return &c.WritebackWorkers })),
		setting("writeback_handover_grace", "BRIDGE_WRITEBACK_HANDOVER_GRACE", "an app change stored this soon after the app was handed a version of the record may not include it: its write is not claimed as the app's own, so the app gets the result back (one extra message rather than a silent divergence)",
			dur(func(c *Config) *time.Duration { return &c.HandOverGrace })),
		setting("writeback_ack_wait", "BRIDGE_WRITEBACK_ACK_WAIT", "how long JetStream waits for the writeback to finish an app change before handing it to another bridge (or this one restarted) after a crash; a long write keeps its change with in-progress acks every third of it (at least 5s)",
			dur(func(c *Config) *time.Duration { return &c.WritebackAckWait })),
	}
}

// attachmentSettings are which files of synced records go both ways.
func attachmentSettings() []Setting {
	return []Setting{
		setting("attachment_max_bytes", "BRIDGE_ATTACHMENT_MAX_BYTES", "largest attachment synced either way, in bytes (default ServiceNow's own limit, com.glide.attachment.max_size 1024 MB); a larger one is rejected and dead-lettered; 0: no attachment is synced",
			integer(func(c *Config) *int64 { return &c.AttachmentMaxBytes })),
		setting("attachment_types_allow", "BRIDGE_ATTACHMENT_TYPES_ALLOW", "comma-separated content types of the attachments synced, each type/subtype or type/* (empty: every type)",
			list(func(c *Config) *[]string { return &c.AttachmentTypesAllow })),
		setting("attachment_types_deny", "BRIDGE_ATTACHMENT_TYPES_DENY", "comma-separated content types never synced, each type/subtype or type/*; beats the allow list",
			list(func(c *Config) *[]string { return &c.AttachmentTypesDeny })),
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

// binding reads one Config field from text and writes it back as text (the
// flag's default in --help). A secret's text is never written back.
type binding struct {
	set    func(*Config, string) error
	get    func(*Config) string
	secret bool
}

// field binds the field p points to through a parser and a formatter.
func field[T any](p func(*Config) *T, parse func(string) (T, error), format func(T) string) binding {
	return binding{
		set: func(c *Config, v string) error {
			x, err := parse(v)
			if err != nil {
				return err
			}
			*p(c) = x
			return nil
		},
		get: func(c *Config) string { return format(*p(c)) },
	}
}

func str(p func(*Config) *string) binding {
	return field(p, func(v string) (string, error) { return v, nil }, func(v string) string { return v })
}

func hidden(p func(*Config) *secret.String) binding {
	b := field(p, func(v string) (secret.String, error) { return secret.String(v), nil }, func(secret.String) string { return "" })
	b.secret = true
	return b
}

func dur(p func(*Config) *time.Duration) binding {
	return field(p, parseDuration, time.Duration.String)
}

func integer[T int | int64](p func(*Config) *T) binding {
	return field(p, parseInteger[T], func(n T) string { return strconv.FormatInt(int64(n), 10) })
}

func float(p func(*Config) *float64) binding {
	return field(p, parseFloat, func(n float64) string { return strconv.FormatFloat(n, 'g', -1, 64) })
}

func boolean(p func(*Config) *bool) binding {
	return field(p, parseBool, strconv.FormatBool)
}

func list(p func(*Config) *[]string) binding {
	return field(p, parseList, func(l []string) string { return strings.Join(l, ",") })
}

func prefixes(p func(*Config) *[]netip.Prefix) binding {
	return field(p, parsePrefixes, formatPrefixes)
}

func knownFields(p func(*Config) *map[string][]string) binding {
	return field(p, parseKnownFields, formatKnownFields)
}

func pairs(p func(*Config) *map[string]string) binding {
	return field(p, parsePairs, formatPairs)
}

func parseDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("not a duration like 30s or 5m: %q", v)
	}
	return d, nil
}

func parseInteger[T int | int64](v string) (T, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("not an integer: %q", v)
	}
	return T(n), nil
}

func parseFloat(v string) (float64, error) {
	n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil {
		return 0, fmt.Errorf("not a number: %q", v)
	}
	return n, nil
}

func parseBool(v string) (bool, error) {
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		return false, fmt.Errorf("not true or false: %q", v)
	}
	return b, nil
}

// parseList splits a comma-separated list, dropping empty entries.
func parseList(v string) ([]string, error) {
	var out []string
	for part := range strings.SplitSeq(v, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out, nil
}

// parsePrefixes parses a comma-separated list of addresses (a single host)
// and CIDR ranges.
func parsePrefixes(v string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for part := range strings.SplitSeq(v, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		pfx, err := netip.ParsePrefix(part)
		if err != nil {
			addr, aerr := netip.ParseAddr(part)
			if aerr != nil {
				return nil, fmt.Errorf("%q is neither an IP address nor a CIDR range like 10.0.0.0/8", part)
			}
			pfx = netip.PrefixFrom(addr, addr.BitLen())
		}
		out = append(out, pfx.Masked())
	}
	return out, nil
}

func formatPrefixes(l []netip.Prefix) string {
	parts := make([]string, len(l))
	for i, pfx := range l {
		parts[i] = pfx.String()
	}
	return strings.Join(parts, ",")
}

// parseKnownFields parses table=field,field;table=field (a YAML map of
// table to a list of fields arrives in the same form). A table given twice
// gets the fields of both.
func parseKnownFields(v string) (map[string][]string, error) {
	m := map[string][]string{}
	for part := range strings.SplitSeq(v, ";") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		table, fields, ok := strings.Cut(part, "=")
		table = strings.TrimSpace(table)
		if !ok || table == "" {
			return nil, fmt.Errorf("want table=field,field;table=field, got %q", part)
		}
		for f := range strings.SplitSeq(fields, ",") {
			if f = strings.TrimSpace(f); f != "" && !slices.Contains(m[table], f) {
				m[table] = append(m[table], f)
			}
		}
		if len(m[table]) == 0 {
			return nil, fmt.Errorf("table %s lists no fields", table)
		}
	}
	if len(m) == 0 {
		return nil, nil // as unset
	}
	return m, nil
}

func formatKnownFields(m map[string][]string) string {
	parts := make([]string, 0, len(m))
	for table, fields := range m {
		parts = append(parts, table+"="+strings.Join(fields, ","))
	}
	sort.Strings(parts)
	return strings.Join(parts, ";")
}

// parsePairs parses key=value,key=value (the conflict policies per field).
func parsePairs(v string) (map[string]string, error) {
	m := map[string]string{}
	for part := range strings.SplitSeq(v, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		key, value, ok := strings.Cut(part, "=")
		if !ok || strings.TrimSpace(key) == "" {
			return nil, fmt.Errorf("want field=policy pairs, got %q", part)
		}
		m[strings.TrimSpace(key)] = strings.TrimSpace(value)
	}
	if len(m) == 0 {
		return nil, nil // as unset
	}
	return m, nil
}

func formatPairs(m map[string]string) string {
	parts := make([]string, 0, len(m))
	for k, v := range m {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}
