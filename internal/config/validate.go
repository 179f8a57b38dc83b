package config

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nowbridge/nowbridge/internal/console/tokens"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// fieldNameRe is a ServiceNow field (column) name.
var fieldNameRe = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,79}$`)

// problems collects what is wrong with a configuration, so that one start
// reports all of it; each message begins with the setting it names.
type problems []error

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Errorf(format, args...)) }

// Validate checks values and their combinations. It reports every problem
// at once (errors.Join: one line each, naming its setting).
func (c *Config) Validate() error {
	var p problems
	c.validateServer(&p)
	c.validateConsole(&p)
	c.validateServiceNow(&p)
	c.validateReceiver(&p)
	c.validateSync(&p)
	c.validateApp(&p)
	c.validateResults(&p)
	c.validateWriteback(&p)
	c.validateAttachments(&p)
	return errors.Join(p...)
}

// validateServer checks the listener, NATS, logs and shutdown.
func (c *Config) validateServer(p *problems) {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		p.add("BRIDGE_LISTEN: %q is not host:port", c.Listen)
	}
	if c.NATSURL == "" {
		if _, _, err := net.SplitHostPort(c.EmbeddedNATSListen); err != nil {
			p.add("BRIDGE_EMBEDDED_NATS_LISTEN: %q is not host:port", c.EmbeddedNATSListen)
		}
		if c.DataDir == "" {
			p.add("BRIDGE_DATA_DIR: must be set for the embedded NATS server")
		}
	}
	if c.StreamReplicas < 1 || c.StreamReplicas > 5 {
		p.add("BRIDGE_STREAM_REPLICAS: must be 1 to 5, got %d", c.StreamReplicas)
	}
	if c.SyncLeaseTTL < 2*time.Second {
		// Renewed every quarter of it; below 2s a busy host could miss
		// renewals and hand the work back and forth.
		p.add("BRIDGE_SYNC_LEASE_TTL: must be at least 2s, got %s", c.SyncLeaseTTL)
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		p.add("BRIDGE_LOG_FORMAT: must be json or text, got %q", c.LogFormat)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		p.add("BRIDGE_LOG_LEVEL: must be debug, info, warn or error, got %q", c.LogLevel)
	}
	if c.ShutdownTimeout <= 0 {
		p.add("BRIDGE_SHUTDOWN_TIMEOUT: must be positive, got %s", c.ShutdownTimeout)
	}
}

// validateConsole checks the console's listener and tokens: a listener
// other than loopback needs a token, and it never shares the webhook
// receiver's port.
func (c *Config) validateConsole(p *problems) {
	set, parseErr := tokens.Parse(c.AdminToken.Reveal())
	if parseErr != nil {
		for _, e := range strings.Split(parseErr.Error(), "\n") {
			p.add("BRIDGE_ADMIN_TOKEN: %s", e) // the parse errors never hold a token
		}
	}
	if c.AdminListen == AdminOff {
		return
	}
	host, port, err := net.SplitHostPort(c.AdminListen)
	if err != nil {
		p.add("BRIDGE_ADMIN_LISTEN: %q is not host:port (or off)", c.AdminListen)
		return
	}
	if lhost, lport, err := net.SplitHostPort(c.Listen); err == nil && port == lport && port != "0" &&
		(host == lhost || wildcardHost(host) || wildcardHost(lhost)) {
		p.add("BRIDGE_ADMIN_LISTEN: %s shares BRIDGE_LISTEN's port %s: the console must not be reachable where ServiceNow's webhooks arrive; give it a port of its own (default %s)", c.AdminListen, port, DefaultAdminListen)
	}
	if len(set) == 0 && parseErr == nil && !loopbackHost(host) {
		p.add("BRIDGE_ADMIN_TOKEN: required when BRIDGE_ADMIN_LISTEN (%s) is not a loopback address: whoever reaches that port could retry and purge dead letters; "+
			"set one (`openssl rand -hex 32`, or BRIDGE_ADMIN_TOKEN_FILE), or listen on 127.0.0.1 and reach the console through a tunnel such as kubectl port-forward", c.AdminListen)
	}
}

// wildcardHost reports a listen host that binds every interface.
func wildcardHost(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }

// loopbackHost reports a listen host only this machine reaches.
func loopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// validateServiceNow checks the instance URL and the known fields; the
// credentials are required only by commands that talk to the instance
// (RequireServiceNow).
func (c *Config) validateServiceNow(p *problems) {
	if c.SNInstanceURL != "" && !httpURL(c.SNInstanceURL) {
		p.add("BRIDGE_SN_INSTANCE_URL: %q is not an http(s) URL", c.SNInstanceURL)
	}
	for _, table := range slices.Sorted(maps.Keys(c.SNKnownFields)) {
		if !events.ValidTable(table) {
			p.add("BRIDGE_SN_KNOWN_FIELDS: %q is not a ServiceNow table name", table)
			continue
		}
		for _, f := range c.SNKnownFields[table] {
			if !fieldNameRe.MatchString(f) {
				p.add("BRIDGE_SN_KNOWN_FIELDS: %s: %q is not a ServiceNow field name (lowercase letters, digits and _, e.g. u_code)", table, f)
			}
		}
	}
}

// validateReceiver checks the webhook secrets and limits, the HTTP
// server's settings, and the webhook tolerance against SN_EVENTS'
// duplicate window.
func (c *Config) validateReceiver(p *problems) {
	if c.WebhookSecrets != "" {
		if _, err := webhook.ParseSecrets(c.WebhookSecrets.Reveal()); err != nil {
			p.add("BRIDGE_WEBHOOK_SECRETS: %v", err) // the parse errors never hold key material
		}
	}
	window := duplicateWindow(events.StreamSN)
	if c.WebhookTolerance <= 0 {
		p.add("BRIDGE_WEBHOOK_TOLERANCE: must be positive")
	} else if span := webhook.ReplaySpan(c.WebhookTolerance); span >= window {
		p.add("BRIDGE_WEBHOOK_TOLERANCE: %s is too long for the %s stream's duplicate window of %s: a captured webhook "+
			"verifies for up to %s after it first arrived (its timestamp may be that much ahead or behind), so a replay after the window "+
			"would be stored twice; set it below %s", c.WebhookTolerance, events.StreamSN, window, span, window/2)
	}
	if c.MaxBodyBytes < 1024 {
		p.add("BRIDGE_MAX_BODY_BYTES: must be at least 1024, got %d", c.MaxBodyBytes)
	}
	if c.PublishTimeout <= 0 {
		p.add("BRIDGE_PUBLISH_TIMEOUT: must be positive")
	}
	if c.MaxConnections < 1 || c.MaxConnections > 1<<20 {
		p.add("BRIDGE_MAX_CONNECTIONS: must be 1 to 1048576, got %d", c.MaxConnections)
	}
	for _, t := range []struct {
		env string
		d   time.Duration
	}{{"BRIDGE_READ_HEADER_TIMEOUT", c.ReadHeaderTimeout}, {"BRIDGE_READ_TIMEOUT", c.ReadTimeout}, {"BRIDGE_IDLE_TIMEOUT", c.IdleTimeout}} {
		if t.d <= 0 {
			p.add("%s: must be positive, got %s", t.env, t.d)
		}
	}
	if c.ReadHeaderTimeout > c.ReadTimeout && c.ReadTimeout > 0 {
		p.add("BRIDGE_READ_HEADER_TIMEOUT (%s) must not exceed BRIDGE_READ_TIMEOUT (%s), which bounds the headers and the body together",
			c.ReadHeaderTimeout, c.ReadTimeout)
	}
	if c.DrainGrace < 0 || (c.ShutdownTimeout > 0 && c.DrainGrace > c.ShutdownTimeout/2) {
		p.add("BRIDGE_DRAIN_GRACE: must be 0 (no drain) up to half of BRIDGE_SHUTDOWN_TIMEOUT (%s), which also covers the requests still running, got %s",
			c.ShutdownTimeout, c.DrainGrace)
	}
}

// validateSync checks the tables, reconcile's schedule and the echo cache.
func (c *Config) validateSync(p *problems) {
	if len(c.Tables) == 0 {
		p.add("BRIDGE_TABLES: at least one table is required")
	}
	for _, t := range c.Tables {
		if !events.ValidTable(t) {
			p.add("BRIDGE_TABLES: %q is not a ServiceNow table name", t)
		}
	}
	if c.ReconcileInterval < 0 {
		p.add("BRIDGE_RECONCILE_INTERVAL: must be 0 (off) or positive")
	}
	if c.DeleteScanInterval < 0 {
		p.add("BRIDGE_DELETE_SCAN_INTERVAL: must be 0 (off) or positive, e.g. 24h")
	}
	if c.DedupeSize < 1 {
		p.add("BRIDGE_DEDUPE_SIZE: must be at least 1")
	}
}

// validateApp checks the applier and its URL and secret.
func (c *Config) validateApp(p *problems) {
	switch c.Applier {
	case "nats":
	case "http":
		if !httpURL(c.ApplyURL) {
			p.add("BRIDGE_APPLY_URL: an http(s) URL is required when BRIDGE_APPLIER=http")
		}
	default:
		p.add("BRIDGE_APPLIER: must be nats or http, got %q", c.Applier)
	}
	if c.ApplySecret != "" {
		if _, err := webhook.ParseSecret(c.ApplySecret.Reveal()); err != nil {
			p.add("BRIDGE_APPLY_SECRET: %v", err)
		}
	}
}

// validateResults checks the results settings: the URL, and limits that
// keep a result at least as long as the stream de-duplicates it (a
// redelivered app change must find its result's id still known).
func (c *Config) validateResults(p *problems) {
	if c.ResultsURL != "" && !httpURL(c.ResultsURL) {
		p.add("BRIDGE_RESULTS_URL: %q is not an http(s) URL", c.ResultsURL)
	}
	if window := duplicateWindow(events.StreamResults); c.ResultsMaxAge < window {
		p.add("BRIDGE_RESULTS_MAX_AGE: %s is shorter than %s' %s duplicate window, which keeps a redelivered app change from publishing a second result; set at least %s",
			c.ResultsMaxAge, events.StreamResults, window, window)
	}
	if c.ResultsMaxMsgs < 0 {
		p.add("BRIDGE_RESULTS_MAX_MSGS: must be 0 (no limit) or positive, got %d", c.ResultsMaxMsgs)
	}
	if c.ResultsMaxBytes < 0 {
		p.add("BRIDGE_RESULTS_MAX_BYTES: must be 0 (no limit) or positive, got %d", c.ResultsMaxBytes)
	}
}

// minWritebackAckWait is the shortest BRIDGE_WRITEBACK_ACK_WAIT: below it,
// a change whose ServiceNow call is slow on a loaded host could be handed
// to another bridge between two in-progress acks.
const minWritebackAckWait = 5 * time.Second

// validateWriteback checks the delete mode, the conflict policies, the
// hand-over grace, the workers and the ack wait.
func (c *Config) validateWriteback(p *problems) {
	switch c.WritebackDelete {
	case "", "resolve", "delete":
	default:
		p.add("BRIDGE_WRITEBACK_DELETE: must be resolve or delete (or empty: each table's mapping decides), got %q", c.WritebackDelete)
	}
	validPolicy := func(p string) bool { return p == "newest_wins" || p == "servicenow_wins" || p == "saas_wins" }
	if !validPolicy(c.ConflictPolicy) {
		p.add("BRIDGE_CONFLICT_POLICY: must be newest_wins, servicenow_wins or saas_wins, got %q", c.ConflictPolicy)
	}
	for _, field := range slices.Sorted(maps.Keys(c.ConflictPolicies)) {
		if policy := c.ConflictPolicies[field]; !validPolicy(policy) {
			p.add("BRIDGE_CONFLICT_POLICIES: %s=%s: policy must be newest_wins, servicenow_wins or saas_wins", field, policy)
		}
	}
	if c.HandOverGrace <= 0 || c.HandOverGrace > time.Minute {
		p.add("BRIDGE_WRITEBACK_HANDOVER_GRACE: must be more than 0 and at most 1m, got %s", c.HandOverGrace)
	}
	if c.WritebackWorkers < 1 || c.WritebackWorkers > 256 {
		p.add("BRIDGE_WRITEBACK_WORKERS: must be 1 to 256, got %d", c.WritebackWorkers)
	}
	if c.WritebackAckWait < minWritebackAckWait {
		p.add("BRIDGE_WRITEBACK_ACK_WAIT: must be at least %s (a write in progress is kept with in-progress acks every third of it), got %s",
			minWritebackAckWait, c.WritebackAckWait)
	}
}

// contentTypeRe is a content type pattern of the attachment lists:
// type/subtype or type/* (lowercase, as RFC 6838 names compare).
var contentTypeRe = regexp.MustCompile(`^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/(\*|[a-z0-9][a-z0-9!#$&^_.+-]{0,126})$`)

// validateAttachments checks the size limit and the content type lists.
func (c *Config) validateAttachments(p *problems) {
	if c.AttachmentMaxBytes < 0 {
		p.add("BRIDGE_ATTACHMENT_MAX_BYTES: must be 0 (no attachment is synced) or positive, got %d", c.AttachmentMaxBytes)
	}
	for _, l := range []struct {
		env   string
		types []string
	}{{"BRIDGE_ATTACHMENT_TYPES_ALLOW", c.AttachmentTypesAllow}, {"BRIDGE_ATTACHMENT_TYPES_DENY", c.AttachmentTypesDeny}} {
		for _, t := range l.types {
			if !contentTypeRe.MatchString(t) {
				p.add("%s: %q is not a content type like image/png or image/* (lowercase, no parameters)", l.env, t)
			}
		}
	}
}

// httpURL reports whether s is an absolute http(s) URL with a host.
func httpURL(s string) bool {
	u, err := url.Parse(s)
	return s != "" && err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != ""
}

// duplicateWindow is how long the bridge's stream of that name
// de-duplicates a message id.
func duplicateWindow(stream string) time.Duration {
	for _, s := range events.Streams(events.StreamOptions{}) {
		if s.Name == stream {
			return s.Duplicates
		}
	}
	return 0
}
