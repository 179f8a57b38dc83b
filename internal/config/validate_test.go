package config

import (
	"reflect"
	"strings"
	"testing"
)

// lines splits a joined error into its problems.
func lines(err error) []string {
	if err == nil {
		return nil
	}
	return strings.Split(err.Error(), "\n")
}

func TestValidate_ReportsEveryProblemAtOnce(t *testing.T) {
	_, err := load(t, map[string]string{
		"BRIDGE_LISTEN":              "8080",
		"BRIDGE_TABLES":              "Incident",
		"BRIDGE_APPLIER":             "http",
		"BRIDGE_WRITEBACK_WORKERS":   "0",
		"BRIDGE_CONFLICT_POLICIES":   "state=loudest_wins,impact=first_wins",
		"BRIDGE_READ_HEADER_TIMEOUT": "1m",
		"BRIDGE_LOG_FORMAT":          "xml",
	})
	want := []string{
		`BRIDGE_LISTEN: "8080" is not host:port`,
		"BRIDGE_LOG_FORMAT: must be json or text",
		"BRIDGE_READ_HEADER_TIMEOUT (1m0s) must not exceed BRIDGE_READ_TIMEOUT (30s)",
		`BRIDGE_TABLES: "Incident" is not a ServiceNow table name`,
		"BRIDGE_APPLY_URL: an http(s) URL is required when BRIDGE_APPLIER=http",
		"BRIDGE_CONFLICT_POLICIES: impact=first_wins: policy must be",
		"BRIDGE_CONFLICT_POLICIES: state=loudest_wins: policy must be",
		"BRIDGE_WRITEBACK_WORKERS: must be 1 to 256, got 0",
	}
	got := lines(err)
	if len(got) != len(want) {
		t.Fatalf("got %d problems, want %d, one line each:\n%v", len(got), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w) {
			t.Errorf("problem %d = %q, want it to start with %q (every problem, in the settings' order, naming its setting)", i+1, got[i], w)
		}
	}
}

func TestLoad_EveryValueThatDoesNotParseIsNamed(t *testing.T) {
	_, err := load(t, map[string]string{
		"BRIDGE_RECONCILE_INTERVAL": "5",
		"BRIDGE_MAX_BODY_BYTES":     "1MiB",
		"BRIDGE_LISTEN":             "8080", // a Validate problem: reported once the values parse
	}, "--writeback-blind", "maybe")
	want := []string{
		`BRIDGE_MAX_BODY_BYTES: not an integer: "1MiB"`,
		`BRIDGE_RECONCILE_INTERVAL: not a duration like 30s or 5m: "5"`,
		`--writeback-blind: not true or false: "maybe"`,
	}
	if got := lines(err); !reflect.DeepEqual(got, want) {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestLoad_EveryBadFileEntryInFileOrder(t *testing.T) {
	path := writeFile(t, "bridge.yaml", "publish_timeout: soon\nlisten: :9000\nno_such_setting: 1\ntables:\n  incident: yes\n")
	_, err := load(t, nil, "--config", path)
	want := []string{
		"config file " + path + ` line 1: publish_timeout: not a duration like 30s or 5m: "soon"`,
		"config file " + path + ` line 3: unknown setting "no_such_setting"`,
		"config file " + path + " line 5: tables: must be a value or a list",
	}
	if got := lines(err); !reflect.DeepEqual(got, want) {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestSettings_DefaultsRoundTrip: every setting parses the text it shows as
// its default in --help back into the same value.
func TestSettings_DefaultsRoundTrip(t *testing.T) {
	def := Default()
	for _, s := range Settings() {
		if s.Secret {
			if got := s.get(&def); got != "" {
				t.Errorf("%s: a secret's default shows as %q, want nothing", s.Env, got)
			}
			continue
		}
		cfg := Default()
		if err := s.set(&cfg, s.get(&def)); err != nil {
			t.Errorf("%s: its default %q does not parse: %v", s.Env, s.get(&def), err)
			continue
		}
		if !reflect.DeepEqual(cfg, def) {
			t.Errorf("%s: setting its default %q changed the config", s.Env, s.get(&def))
		}
	}
}

func TestParsers(t *testing.T) {
	if got, err := parseList(" incident, ,change_request ,"); err != nil || !reflect.DeepEqual(got, []string{"incident", "change_request"}) {
		t.Errorf("parseList = %q, %v", got, err)
	}
	if got, err := parsePairs("state=servicenow_wins, short_description = saas_wins,"); err != nil ||
		!reflect.DeepEqual(got, map[string]string{"state": "servicenow_wins", "short_description": "saas_wins"}) {
		t.Errorf("parsePairs = %v, %v", got, err)
	}
	if _, err := parsePairs("state"); err == nil || !strings.Contains(err.Error(), `want field=policy pairs, got "state"`) {
		t.Errorf("parsePairs without =: %v", err)
	}
	if got, err := parsePrefixes("10.0.0.0/8, 192.168.1.7 ,::1"); err != nil || formatPrefixes(got) != "10.0.0.0/8,192.168.1.7/32,::1/128" {
		t.Errorf("parsePrefixes = %v, %v", got, err)
	}
	if _, err := parsePrefixes("proxy.local"); err == nil || !strings.Contains(err.Error(), "neither an IP address nor a CIDR range") {
		t.Errorf("parsePrefixes of a name: %v", err)
	}
	if got, err := parseKnownFields("incident=u_a,u_b;incident=u_a,u_c;problem=u_d"); err != nil || formatKnownFields(got) != "incident=u_a,u_b,u_c;problem=u_d" {
		t.Errorf("parseKnownFields = %v, %v", got, err)
	}
	if _, err := parseKnownFields("incident="); err == nil || !strings.Contains(err.Error(), "table incident lists no fields") {
		t.Errorf("parseKnownFields without fields: %v", err)
	}
	if n, err := parseInteger[int64](" 42 "); err != nil || n != 42 {
		t.Errorf("parseInteger = %d, %v", n, err)
	}
	if _, err := parseBool("yes"); err == nil {
		t.Error("parseBool(yes) accepted")
	}
}
