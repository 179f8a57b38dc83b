package config

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/pflag"

	"github.com/nowbridge/nowbridge/internal/events"
)

const (
	secretA = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" // 32 bytes
	secretB = "whsec_ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="
)

// load runs Load with the given flags and environment.
func load(t *testing.T, env map[string]string, args ...string) (Config, error) {
	t.Helper()
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	return Load(fs, func(k string) string { return env[k] })
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoad_DefaultsAreValid(t *testing.T) {
	cfg, err := load(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg, Default()) {
		t.Fatalf("Load with nothing set = %+v, want Default()", cfg)
	}
	want := map[string]any{"Listen": ":8080", "DataDir": "./data", "EmbeddedNATSListen": "127.0.0.1:4222", "ReconcileInterval": 5 * time.Minute, "Applier": "nats", "LogFormat": "json", "MaxBodyBytes": int64(1 << 20), "WebhookTolerance": 5 * time.Minute}
	v := reflect.ValueOf(cfg)
	for field, w := range want {
		if got := v.FieldByName(field).Interface(); !reflect.DeepEqual(got, w) {
			t.Errorf("default %s = %v, want %v (SPEC §4)", field, got, w)
		}
	}
	if !reflect.DeepEqual(cfg.Tables, []string{"incident"}) {
		t.Errorf("default tables %v", cfg.Tables)
	}
}

func TestLoad_FlagsBeatEnvBeatFile(t *testing.T) {
	file := writeFile(t, "bridge.yaml", "listen: 127.0.0.1:1001\ntables: [incident, problem]\nreconcile_interval: 1m\n")
	env := map[string]string{"BRIDGE_CONFIG": file}

	cfg, err := load(t, env)
	if err != nil || cfg.Listen != "127.0.0.1:1001" || !reflect.DeepEqual(cfg.Tables, []string{"incident", "problem"}) || cfg.ReconcileInterval != time.Minute {
		t.Fatalf("file only: %+v %v", cfg, err)
	}
	env["BRIDGE_LISTEN"] = "127.0.0.1:1002"
	if cfg, err = load(t, env); err != nil || cfg.Listen != "127.0.0.1:1002" {
		t.Fatalf("env over file: %q %v", cfg.Listen, err)
	}
	if cfg, err = load(t, env, "--listen", "127.0.0.1:1003"); err != nil || cfg.Listen != "127.0.0.1:1003" {
		t.Fatalf("flag over env: %q %v", cfg.Listen, err)
	}
	if cfg.ReconcileInterval != time.Minute || len(cfg.Tables) != 2 {
		t.Errorf("settings only in the file were lost: %+v", cfg)
	}
	// --config beats BRIDGE_CONFIG.
	other := writeFile(t, "other.yaml", "listen: 127.0.0.1:1004\n")
	delete(env, "BRIDGE_LISTEN")
	if cfg, err = load(t, env, "--config", other); err != nil || cfg.Listen != "127.0.0.1:1004" {
		t.Fatalf("--config over BRIDGE_CONFIG: %q %v", cfg.Listen, err)
	}
}

func TestLoad_SecretFiles(t *testing.T) {
	secretFile := writeFile(t, "secrets", secretA+","+secretB+"\n")
	cfg, err := load(t, map[string]string{"BRIDGE_WEBHOOK_SECRETS_FILE": secretFile, "BRIDGE_SN_CLIENT_SECRET_FILE": writeFile(t, "cs", "s3cret\n")})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.WebhookSecrets.Reveal() != secretA+","+secretB || cfg.SNClientSecret.Reveal() != "s3cret" {
		t.Fatalf("_FILE values not read and trimmed: %d %d bytes", len(cfg.WebhookSecrets), len(cfg.SNClientSecret))
	}
	// In the YAML file, <key>_file works too.
	yml := writeFile(t, "b.yaml", "webhook_secrets_file: "+secretFile+"\n")
	if cfg, err = load(t, nil, "--config", yml); err != nil || cfg.WebhookSecrets.Reveal() != secretA+","+secretB {
		t.Fatalf("webhook_secrets_file in YAML: %v", err)
	}
	// A missing file names the variable.
	_, err = load(t, map[string]string{"BRIDGE_WEBHOOK_SECRETS_FILE": filepath.Join(t.TempDir(), "nope")})
	if err == nil || !strings.HasPrefix(err.Error(), "BRIDGE_WEBHOOK_SECRETS_FILE: cannot read") {
		t.Fatalf("missing _FILE: %v", err)
	}
	// _FILE is only for secrets.
	if cfg, err = load(t, map[string]string{"BRIDGE_LISTEN_FILE": secretFile}); err != nil || cfg.Listen != ":8080" {
		t.Fatalf("BRIDGE_LISTEN_FILE should be ignored: %q %v", cfg.Listen, err)
	}
}

func TestLoad_YAMLErrorsNameFileLineAndKey(t *testing.T) {
	cases := []struct{ yaml, want string }{
		{"listen: :9000\nno_such_setting: 1\n", `line 2: unknown setting "no_such_setting"`},
		{"listen: :9000\n\npublish_timeout: soon\n", `line 3: publish_timeout: not a duration like 30s or 5m: "soon"`},
		{"max_body_bytes: 1MiB\n", `line 1: max_body_bytes: not an integer`},
		{"tables:\n  incident: yes\n", `line 2: tables: must be a value or a list`},
		{"listen: [unclosed\n", `config file`},
	}
	for _, c := range cases {
		path := writeFile(t, "bridge.yaml", c.yaml)
		_, err := load(t, nil, "--config", path)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%q: %v, want the file name and %q", c.yaml, err, c.want)
		}
	}
	if _, err := load(t, nil, "--config", filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "config file") {
		t.Errorf("missing config file: %v", err)
	}
}

func TestLoad_InvalidValuesNameTheSetting(t *testing.T) {
	cases := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"BRIDGE_LISTEN": "8080"}, "BRIDGE_LISTEN: \"8080\" is not host:port"},
		{map[string]string{"BRIDGE_EMBEDDED_NATS_LISTEN": "localhost"}, "BRIDGE_EMBEDDED_NATS_LISTEN"},
		{map[string]string{"BRIDGE_DATA_DIR": ""}, ""}, // empty env means unset: the default stays
		{map[string]string{"BRIDGE_TABLES": "Incident"}, `BRIDGE_TABLES: "Incident" is not a ServiceNow table name`},
		{map[string]string{"BRIDGE_TABLES": " , "}, "BRIDGE_TABLES: at least one table"},
		{map[string]string{"BRIDGE_RECONCILE_INTERVAL": "-1m"}, "BRIDGE_RECONCILE_INTERVAL"},
		{map[string]string{"BRIDGE_RECONCILE_INTERVAL": "5"}, "BRIDGE_RECONCILE_INTERVAL: not a duration"},
		{map[string]string{"BRIDGE_APPLIER": "kafka"}, `BRIDGE_APPLIER: must be nats or http, got "kafka"`},
		{map[string]string{"BRIDGE_APPLIER": "http"}, "BRIDGE_APPLY_URL: an http(s) URL is required"},
		{map[string]string{"BRIDGE_LOG_FORMAT": "xml"}, "BRIDGE_LOG_FORMAT"},
		{map[string]string{"BRIDGE_LOG_LEVEL": "loud"}, "BRIDGE_LOG_LEVEL"},
		{map[string]string{"BRIDGE_MAX_BODY_BYTES": "100"}, "BRIDGE_MAX_BODY_BYTES: must be at least 1024"},
		{map[string]string{"BRIDGE_STREAM_REPLICAS": "7"}, "BRIDGE_STREAM_REPLICAS"},
		{map[string]string{"BRIDGE_SN_INSTANCE_URL": "dev12345.service-now.com"}, "BRIDGE_SN_INSTANCE_URL"},
		{map[string]string{"BRIDGE_PUBLISH_TIMEOUT": "0s"}, "BRIDGE_PUBLISH_TIMEOUT: must be positive"},
		{map[string]string{"BRIDGE_WEBHOOK_TOLERANCE": "0s"}, "BRIDGE_WEBHOOK_TOLERANCE"},
		{map[string]string{"BRIDGE_DEDUPE_SIZE": "0"}, "BRIDGE_DEDUPE_SIZE"},
	}
	for _, c := range cases {
		_, err := load(t, c.env)
		if c.want == "" {
			if err != nil {
				t.Errorf("%v: %v, want no error", c.env, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.env, err, c.want)
		}
	}
	if _, err := load(t, nil, "--stream-replicas", "three"); err == nil || !strings.HasPrefix(err.Error(), "--stream-replicas: not an integer") {
		t.Errorf("bad flag: %v, want it named", err)
	}
}

func TestLoad_SecretsNeverInErrors(t *testing.T) {
	const leak = "hunter2hunter2"
	bad := "whsec_" + leak + "!!"
	secretFile := writeFile(t, "s", bad)
	for _, c := range []struct {
		env  map[string]string
		args []string
		yaml string
	}{
		{env: map[string]string{"BRIDGE_WEBHOOK_SECRETS": bad}},
		{env: map[string]string{"BRIDGE_WEBHOOK_SECRETS": secretA + "," + bad}},
		{env: map[string]string{"BRIDGE_WEBHOOK_SECRETS_FILE": secretFile}},
		{env: map[string]string{"BRIDGE_APPLY_SECRET": bad}},
		{args: []string{"--webhook-secrets", bad}},
		{yaml: "webhook_secrets: " + bad + "\n"},
		{yaml: "apply_secret: " + bad + "\n"},
	} {
		args := c.args
		if c.yaml != "" {
			args = append(args, "--config", writeFile(t, "c.yaml", c.yaml))
		}
		_, err := load(t, c.env, args...)
		if err == nil {
			t.Errorf("%v %v: a malformed secret was accepted", c.env, args)
			continue
		}
		if strings.Contains(err.Error(), leak) {
			t.Errorf("error reveals the secret: %v", err)
		}
		if !strings.Contains(err.Error(), "SECRET") {
			t.Errorf("error %q does not name the setting", err)
		}
	}
	cfg, err := load(t, map[string]string{"BRIDGE_NATS_URL": "nats://u:" + leak + "@127.0.0.1:4222", "BRIDGE_SN_CLIENT_SECRET": leak})
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cfg.Logger(&logs).Info("config", "cfg", cfg, "nats", cfg.NATSURL, "secret", cfg.SNClientSecret)
	if strings.Contains(logs.String(), leak) {
		t.Errorf("a logged config reveals a secret: %s", logs.String())
	}
}

func TestSettings_EveryFieldHasOneSettingAndFlag(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	BindFlags(fs)
	envs := map[string]bool{}
	for _, s := range Settings() {
		if !strings.HasPrefix(s.Env, "BRIDGE_") || envs[s.Env] {
			t.Errorf("setting %s: env %q is not a unique BRIDGE_ name", s.Key, s.Env)
		}
		envs[s.Env] = true
		if fs.Lookup(s.Flag()) == nil {
			t.Errorf("setting %s has no flag --%s", s.Key, s.Flag())
		}
		if s.Usage == "" {
			t.Errorf("setting %s has no usage text", s.Key)
		}
	}
	if n := reflect.TypeOf(Config{}).NumField(); len(Settings()) != n {
		t.Errorf("%d settings for %d Config fields", len(Settings()), n)
	}
	for _, spec := range []string{"BRIDGE_LISTEN", "BRIDGE_NATS_URL", "BRIDGE_DATA_DIR", "BRIDGE_EMBEDDED_NATS_LISTEN", "BRIDGE_SN_INSTANCE_URL", "BRIDGE_SN_CLIENT_ID", "BRIDGE_SN_CLIENT_SECRET", "BRIDGE_WEBHOOK_SECRETS", "BRIDGE_TABLES", "BRIDGE_RECONCILE_INTERVAL", "BRIDGE_APPLIER", "BRIDGE_APPLY_URL", "BRIDGE_LOG_FORMAT"} {
		if !envs[spec] {
			t.Errorf("SPEC §4 variable %s is not a setting", spec)
		}
	}
}

func TestLogger_FormatAndLevel(t *testing.T) {
	var b bytes.Buffer
	c := Default()
	c.LogFormat, c.LogLevel = "text", "warn"
	log := c.Logger(&b)
	log.Info("hidden")
	log.Warn("shown", "table", "incident")
	if strings.Contains(b.String(), "hidden") || !strings.Contains(b.String(), "level=WARN msg=shown table=incident") {
		t.Fatalf("text logger at warn wrote %q", b.String())
	}
	b.Reset()
	c.LogFormat, c.LogLevel = "json", "debug"
	c.Logger(&b).Debug("x")
	if !strings.HasPrefix(b.String(), "{") {
		t.Fatalf("json logger wrote %q", b.String())
	}
}

func TestLoad_WritebackSettings(t *testing.T) {
	cfg, err := load(t, map[string]string{
		"BRIDGE_WRITEBACK_DELETE":  "delete",
		"BRIDGE_CONFLICT_POLICIES": "state=servicenow_wins, short_description = saas_wins",
		"BRIDGE_WRITEBACK_BLIND":   "true",
	}, "--conflict-policy", "saas_wins", "--writeback-workers", "3", "--writeback-ack-wait", "5s")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.WritebackDelete != "delete" || cfg.ConflictPolicy != "saas_wins" || !cfg.WritebackBlind || cfg.WritebackWorkers != 3 || cfg.WritebackAckWait != 5*time.Second {
		t.Errorf("writeback settings not loaded: %+v", cfg)
	}
	if cfg.ConflictPolicies["state"] != "servicenow_wins" || cfg.ConflictPolicies["short_description"] != "saas_wins" {
		t.Errorf("per-field policies = %v", cfg.ConflictPolicies)
	}
	for _, bad := range []struct{ env, val, want string }{
		{"BRIDGE_WRITEBACK_DELETE", "shred", "BRIDGE_WRITEBACK_DELETE: must be resolve or delete"},
		{"BRIDGE_CONFLICT_POLICY", "coin_flip", "BRIDGE_CONFLICT_POLICY: must be"},
		{"BRIDGE_CONFLICT_POLICIES", "state=loudest_wins", "BRIDGE_CONFLICT_POLICIES: state=loudest_wins"},
		{"BRIDGE_CONFLICT_POLICIES", "state", "BRIDGE_CONFLICT_POLICIES: want field=policy"},
		{"BRIDGE_WRITEBACK_BLIND", "maybe", "BRIDGE_WRITEBACK_BLIND: not true or false"},
		{"BRIDGE_WRITEBACK_ACK_WAIT", "4s", "BRIDGE_WRITEBACK_ACK_WAIT: must be at least 5s"},
		{"BRIDGE_WRITEBACK_ACK_WAIT", "0s", "BRIDGE_WRITEBACK_ACK_WAIT: must be at least 5s"},
	} {
		_, err := load(t, map[string]string{bad.env: bad.val})
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s=%s: err %v, want it to contain %q", bad.env, bad.val, err, bad.want)
		}
	}
}

// TestREADME_ListsEverySetting keeps the README's configuration table whole.
func TestREADME_ListsEverySetting(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range Settings() {
		if !strings.Contains(string(b), "| `"+s.Env+"`") {
			t.Errorf("README.md's configuration table lacks %s", s.Env)
		}
	}
}

func TestLoad_SNKnownFields(t *testing.T) {
	want := map[string][]string{"incident": {"u_code", "u_site"}, "problem": {"u_root_cause"}}
	file := writeFile(t, "bridge.yaml", "sn_known_fields:\n  incident: [u_code, u_site]\n  problem: u_root_cause\n")
	for name, src := range map[string]struct {
		env  map[string]string
		args []string
	}{
		"env":       {env: map[string]string{"BRIDGE_SN_KNOWN_FIELDS": " incident = u_code, u_site ; problem=u_root_cause;"}},
		"flag":      {args: []string{"--sn-known-fields", "incident=u_code,u_site;problem=u_root_cause"}},
		"YAML map":  {env: map[string]string{"BRIDGE_CONFIG": file}},
		"YAML list": {env: map[string]string{"BRIDGE_CONFIG": writeFile(t, "list.yaml", "sn_known_fields: [\"incident=u_code,u_site\", problem=u_root_cause]\n")}},
	} {
		t.Run(name, func(t *testing.T) {
			cfg, err := load(t, src.env, src.args...)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(cfg.SNKnownFields, want) {
				t.Errorf("known fields = %v, want %v", cfg.SNKnownFields, want)
			}
		})
	}
	// The flag's default text is what the setting parses back.
	cfg, _ := load(t, map[string]string{"BRIDGE_CONFIG": file})
	for _, s := range Settings() {
		if s.Env == "BRIDGE_SN_KNOWN_FIELDS" {
			if got := s.get(&cfg); got != "incident=u_code,u_site;problem=u_root_cause" {
				t.Errorf("rendered as %q", got)
			}
		}
	}
	for _, bad := range []struct{ val, want string }{
		{"incident", "BRIDGE_SN_KNOWN_FIELDS: want table=field,field;table=field"},
		{"incident=", "BRIDGE_SN_KNOWN_FIELDS: table incident lists no fields"},
		{"Incident Table=u_code", "BRIDGE_SN_KNOWN_FIELDS: \"Incident Table\" is not a ServiceNow table name"},
		{"incident=u_code,Site Name", "BRIDGE_SN_KNOWN_FIELDS: incident: \"Site Name\" is not a ServiceNow field name"},
		{"incident=caller_id.name", "is not a ServiceNow field name"},
	} {
		_, err := load(t, map[string]string{"BRIDGE_SN_KNOWN_FIELDS": bad.val})
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("BRIDGE_SN_KNOWN_FIELDS=%s: err %v, want it to contain %q", bad.val, err, bad.want)
		}
	}
	_, err := load(t, map[string]string{"BRIDGE_CONFIG": writeFile(t, "nested.yaml", "sn_known_fields:\n  incident:\n    code: u_code\n")})
	if err == nil || !strings.Contains(err.Error(), "line 3: incident: want a value or a list") {
		t.Errorf("nested map: err %v", err)
	}
	_, err = load(t, map[string]string{"BRIDGE_CONFIG": writeFile(t, "policies.yaml", "tables:\n  incident: x\n")})
	if err == nil || !strings.Contains(err.Error(), "tables: must be a value or a list") {
		t.Errorf("a map for a setting that takes none: err %v", err)
	}
}

func TestLoad_ReceiverSettings(t *testing.T) {
	cfg, err := load(t, map[string]string{
		"BRIDGE_MAX_CONNECTIONS":     "256",
		"BRIDGE_READ_HEADER_TIMEOUT": "2s",
		"BRIDGE_TRUSTED_PROXIES":     "10.0.0.0/8, 192.0.2.7,2001:db8::/32",
		"BRIDGE_DRAIN_GRACE":         "0",
	}, "--read-timeout", "10s", "--idle-timeout", "20s")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxConnections != 256 || cfg.ReadHeaderTimeout != 2*time.Second || cfg.ReadTimeout != 10*time.Second ||
		cfg.IdleTimeout != 20*time.Second || cfg.DrainGrace != 0 {
		t.Errorf("receiver settings not loaded: %+v", cfg)
	}
	var got []string
	for _, p := range cfg.TrustedProxies {
		got = append(got, p.String())
	}
	if want := []string{"10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"}; !reflect.DeepEqual(got, want) {
		t.Errorf("BRIDGE_TRUSTED_PROXIES parsed as %v, want %v (a bare address is a one-host range)", got, want)
	}
	def := Default()
	if def.MaxConnections != 1024 || def.ReadHeaderTimeout != 5*time.Second || def.ReadTimeout != 30*time.Second ||
		def.IdleTimeout != time.Minute || def.DrainGrace != 2*time.Second || len(def.TrustedProxies) != 0 {
		t.Errorf("receiver defaults changed: %+v", def)
	}
	for _, bad := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"BRIDGE_MAX_CONNECTIONS": "0"}, "BRIDGE_MAX_CONNECTIONS: must be 1 to"},
		{map[string]string{"BRIDGE_READ_HEADER_TIMEOUT": "-1s"}, "BRIDGE_READ_HEADER_TIMEOUT: must be positive"},
		{map[string]string{"BRIDGE_READ_HEADER_TIMEOUT": "1m"}, "BRIDGE_READ_HEADER_TIMEOUT (1m0s) must not exceed BRIDGE_READ_TIMEOUT (30s)"},
		{map[string]string{"BRIDGE_IDLE_TIMEOUT": "0s"}, "BRIDGE_IDLE_TIMEOUT: must be positive"},
		{map[string]string{"BRIDGE_DRAIN_GRACE": "15s"}, "BRIDGE_DRAIN_GRACE: must be 0 (no drain) up to half of BRIDGE_SHUTDOWN_TIMEOUT (20s)"},
		{map[string]string{"BRIDGE_SHUTDOWN_TIMEOUT": "0s"}, "BRIDGE_SHUTDOWN_TIMEOUT: must be positive"},
		{map[string]string{"BRIDGE_TRUSTED_PROXIES": "proxy.internal"}, `BRIDGE_TRUSTED_PROXIES: "proxy.internal" is neither an IP address nor a CIDR range`},
	} {
		_, err := load(t, bad.env)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%v: err %v, want it to contain %q", bad.env, err, bad.want)
		}
	}
}

// TestLoad_WebhookToleranceBelowTheDuplicateWindow: a signed webhook can be
// replayed for up to twice the tolerance after it first arrived, and only
// SN_EVENTS' duplicate window (1h) keeps the replay from being stored again.
func TestLoad_WebhookToleranceBelowTheDuplicateWindow(t *testing.T) {
	for _, c := range []struct {
		tolerance string
		ok        bool
	}{
		{"5m", true},
		{"29m59s", true},
		{"30m", false},
		{"45m", false},
		{"2h", false},
	} {
		_, err := load(t, map[string]string{"BRIDGE_WEBHOOK_TOLERANCE": c.tolerance})
		switch {
		case c.ok && err != nil:
			t.Errorf("BRIDGE_WEBHOOK_TOLERANCE=%s refused: %v", c.tolerance, err)
		case !c.ok && err == nil:
			t.Errorf("BRIDGE_WEBHOOK_TOLERANCE=%s accepted, though a replay could outlive the 1h duplicate window", c.tolerance)
		case !c.ok:
			for _, want := range []string{"BRIDGE_WEBHOOK_TOLERANCE", "SN_EVENTS", "duplicate window of 1h0m0s", "stored twice", "set it below 30m0s"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("BRIDGE_WEBHOOK_TOLERANCE=%s: error %q does not say %q", c.tolerance, err, want)
				}
			}
		}
	}
}

func TestLoad_ResultsSettingsReachTheStream(t *testing.T) {
	cfg, err := load(t, map[string]string{
		"BRIDGE_RESULTS_URL":       "https://app.example.com/nowbridge/results",
		"BRIDGE_RESULTS_MAX_AGE":   "72h",
		"BRIDGE_RESULTS_MAX_BYTES": "536870912",
	}, "--results-max-msgs", "100000", "--stream-replicas", "3")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ResultsURL != "https://app.example.com/nowbridge/results" {
		t.Errorf("results url = %q", cfg.ResultsURL)
	}
	var results jetstream.StreamConfig
	for _, s := range events.Streams(cfg.StreamOptions()) {
		if s.Name == events.StreamResults {
			results = s
		}
	}
	if results.MaxAge != 72*time.Hour || results.MaxMsgs != 100000 || results.MaxBytes != 536870912 || results.Replicas != 3 || results.Duplicates != time.Hour {
		t.Errorf("BRIDGE_RESULTS = max age %v, max msgs %d, max bytes %d, replicas %d, duplicates %v; want the settings, with the 1h duplicate window",
			results.MaxAge, results.MaxMsgs, results.MaxBytes, results.Replicas, results.Duplicates)
	}
	def := Default()
	if d := def.StreamOptions(); d.ResultsMaxAge != 7*24*time.Hour || d.ResultsMaxMsgs != 0 || d.ResultsMaxBytes != 0 {
		t.Errorf("default results limits %+v, want 7 days and no count or size limit", d)
	}
	for _, bad := range []struct{ env, val, want string }{
		{"BRIDGE_RESULTS_URL", "app.example.com/results", "BRIDGE_RESULTS_URL: \"app.example.com/results\" is not an http(s) URL"},
		{"BRIDGE_RESULTS_MAX_AGE", "30m", "BRIDGE_RESULTS_MAX_AGE: 30m0s is shorter than BRIDGE_RESULTS' 1h0m0s duplicate window"},
		{"BRIDGE_RESULTS_MAX_MSGS", "-1", "BRIDGE_RESULTS_MAX_MSGS: must be 0 (no limit) or positive"},
		{"BRIDGE_RESULTS_MAX_BYTES", "lots", "BRIDGE_RESULTS_MAX_BYTES: not an integer"},
	} {
		_, err := load(t, map[string]string{bad.env: bad.val})
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s=%s: err %v, want it to contain %q", bad.env, bad.val, err, bad.want)
		}
	}
}

func TestLoad_AttachmentSettings(t *testing.T) {
	cfg, err := load(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AttachmentMaxBytes != 1024<<20 || cfg.AttachmentTypesAllow != nil || cfg.AttachmentTypesDeny != nil {
		t.Errorf("defaults: max %d allow %v deny %v, want ServiceNow's 1024 MB and no lists", cfg.AttachmentMaxBytes, cfg.AttachmentTypesAllow, cfg.AttachmentTypesDeny)
	}
	file := writeFile(t, "bridge.yaml", "attachment_types_allow: [image/*, application/pdf]\n")
	cfg, err = load(t, map[string]string{"BRIDGE_CONFIG": file, "BRIDGE_ATTACHMENT_MAX_BYTES": "0"}, "--attachment-types-deny", "image/svg+xml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AttachmentMaxBytes != 0 || !reflect.DeepEqual(cfg.AttachmentTypesAllow, []string{"image/*", "application/pdf"}) || !reflect.DeepEqual(cfg.AttachmentTypesDeny, []string{"image/svg+xml"}) {
		t.Errorf("got max %d allow %v deny %v, want 0, the file's allow list and the flag's deny list", cfg.AttachmentMaxBytes, cfg.AttachmentTypesAllow, cfg.AttachmentTypesDeny)
	}
	_, err = load(t, map[string]string{"BRIDGE_ATTACHMENT_MAX_BYTES": "-1", "BRIDGE_ATTACHMENT_TYPES_DENY": "Image/PNG,text"})
	for _, want := range []string{"BRIDGE_ATTACHMENT_MAX_BYTES: must be 0", `BRIDGE_ATTACHMENT_TYPES_DENY: "Image/PNG"`, `BRIDGE_ATTACHMENT_TYPES_DENY: "text"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want it to name %s", err, want)
		}
	}
}
