package doctor_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/doctor"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/secret"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// -show prints each scenario's checklist (used for docs/servicenow-setup.md).
var show = flag.Bool("show", false, "print the doctor's output for every scenario")

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	clientID     = "doctor-test-client"
	clientSecret = "doctor-test-secret"
)

var incidentFields = []string{"comments", "correlation_display", "correlation_id", "description", "impact",
	"number", "priority", "short_description", "state", "urgency", "work_notes"}

// instance is a simulated ServiceNow on httptest. The handler stamps Date
// with the simulator's clock, so a skewed instance clock shows the way it
// does on a real instance.
type instance struct {
	sim *snsim.Server
	srv *httptest.Server
}

func newInstance(t *testing.T, clock func() time.Time) *instance {
	t.Helper()
	if clock == nil {
		clock = time.Now
	}
	sim := snsim.New(snsim.Config{ClientID: clientID, ClientSecret: clientSecret, Seed: 7, Now: clock})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Date", clock().UTC().Format(http.TimeFormat))
		sim.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { srv.Close(); sim.Close() })
	for _, d := range []string{"Email down", "VPN flaps"} {
		if _, err := sim.Insert("incident", map[string]string{"short_description": d, "urgency": "2", "impact": "2"}, "admin"); err != nil {
			t.Fatal(err)
		}
	}
	return &instance{sim: sim, srv: srv}
}

func (in *instance) options() doctor.Options {
	return doctor.Options{
		InstanceURL:  in.srv.URL,
		ClientID:     clientID,
		ClientSecret: secret.String(clientSecret),
		Tables:       []string{"incident"},
		Fields:       map[string][]string{"incident": incidentFields},
		Close:        map[string]*mapping.Close{"incident": mapping.Default(nil).Close("incident")},
	}
}

// receiver is the bridge's webhook endpoint as SPEC §2 defines it: 401
// without a valid signature, 422 for a table it does not sync.
func receiver(t *testing.T, secrets ...webhook.Secret) *httptest.Server {
	t.Helper()
	v := &webhook.Verifier{Secrets: secrets}
	val := events.NewValidator([]string{"incident"})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/webhooks/servicenow" || r.Method != http.MethodPost {
			http.NotFound(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		if err := v.Verify(r.Header.Get(webhook.HeaderID), r.Header.Get(webhook.HeaderTimestamp), r.Header.Get(webhook.HeaderSignature), body); err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if _, err := val.DecodeBody(body); err != nil {
			var ve *events.ValidationError
			if errors.As(err, &ve) {
				w.WriteHeader(http.StatusUnprocessableEntity)
				return
			}
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func webhookKey(t *testing.T, b byte) webhook.Secret {
	t.Helper()
	return webhook.NewSecret(bytes.Repeat([]byte{b}, 32))
}

func run(t *testing.T, name string, opt doctor.Options) doctor.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	r := doctor.Run(ctx, opt)
	if *show {
		var b strings.Builder
		_ = r.WriteText(&b)
		os.Stdout.WriteString("=== " + name + "\n" + strings.ReplaceAll(b.String(), opt.InstanceURL, "https://dev12345.service-now.com") + "\n")
	}
	return r
}

func check(t *testing.T, r doctor.Report, id string) doctor.Check {
	t.Helper()
	for _, c := range r.Checks {
		if c.ID == id {
			return c
		}
	}
	t.Fatalf("no check %q in %+v", id, r.Checks)
	return doctor.Check{}
}

// expect asserts one check's status and that its detail and fix say what
// they must; every other check must not have failed unless listed in also.
func expect(t *testing.T, r doctor.Report, id string, st doctor.Status, detail, fix string, alsoFailing ...string) {
	t.Helper()
	c := check(t, r, id)
	if c.Status != st {
		t.Errorf("%s: status %s (%s), want %s", id, c.Status, c.Detail, st)
	}
	if !strings.Contains(c.Detail, detail) {
		t.Errorf("%s: detail %q, want it to contain %q", id, c.Detail, detail)
	}
	if fix != "" && !strings.Contains(c.Fix, fix) {
		t.Errorf("%s: fix %q, want it to contain %q", id, c.Fix, fix)
	}
	if st == doctor.Fail && r.OK {
		t.Errorf("report OK with a failed check")
	}
	for _, o := range r.Checks {
		if o.ID != id && o.Status == doctor.Fail && !contains(alsoFailing, o.ID) {
			t.Errorf("unexpected failure of %s: %s (fix: %s)", o.ID, o.Detail, o.Fix)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestDoctor_HealthyInstancePassesEveryCheck(t *testing.T) {
	in := newInstance(t, nil)
	in.sim.SetRateLimitRules([]snsim.RateLimitRule{{Count: 5000}})
	// Healthy with every optional grant: nothing to warn about.
	in.sim.SetGrants(snsim.Grants{Dictionary: true, AuditDelete: true})
	key := webhookKey(t, 1)
	rcv := receiver(t, key)
	opt := in.options()
	opt.WriteProbe = true
	opt.WebhookURL = rcv.URL + "/webhooks/servicenow"
	opt.WebhookSecrets = []webhook.Secret{key}
	before := in.sim.Count("incident")
	r := run(t, "healthy", opt)
	if !r.OK {
		t.Fatalf("healthy instance failed: %+v", r.Checks)
	}
	for _, c := range r.Checks {
		if c.ID == "selftest" && c.Status == doctor.Skip {
			continue // opt-in (--instance-selftest); selftest_test.go runs it against the real receiver
		}
		if c.Status != doctor.Pass {
			t.Errorf("%s: %s (%s), want pass", c.ID, c.Status, c.Detail)
		}
	}
	expect(t, r, "table:incident", doctor.Pass, "2 rows readable", "")
	expect(t, r, "dictionary", doctor.Pass, "readable", "")
	expect(t, r, "audit_delete:incident", doctor.Pass, "no audited delete of incident counted", "")
	expect(t, r, "close_code:incident", doctor.Pass, `close_code "Solution provided" (chosen from the instance's choices; 10 active)`, "")
	expect(t, r, "write_probe:incident", doctor.Pass, "created, updated and deleted INC", "")
	expect(t, r, "rate_limit", doctor.Pass, "X-RateLimit-Limit 5000", "")
	expect(t, r, "webhook", doctor.Pass, "signed probe accepted (422", "")
	if after := in.sim.Count("incident"); after != before {
		t.Errorf("the write probe left %d records behind", after-before)
	}
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back doctor.Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || !back.OK || len(back.Checks) != len(r.Checks) {
		t.Errorf("--json output does not round-trip: %v %s", err, js.String())
	}
}

func TestDoctor_LeastPrivilegePassesWithOneWarning(t *testing.T) {
	in := newInstance(t, nil)
	// A delete is audited, as on any instance in use; the integration user
	// cannot see it.
	if err := in.sim.Delete("incident", in.sim.IDs("incident")[0], "admin"); err != nil {
		t.Fatal(err)
	}
	r := run(t, "least privilege (documented roles only)", in.options())
	if !r.OK {
		t.Fatalf("the documented roles must pass: %+v", r.Checks)
	}
	expect(t, r, "dictionary", doctor.Pass, "not needed", "")
	expect(t, r, "fields:incident", doctor.Pass, "all 11 present", "")
	expect(t, r, "scan:incident", doctor.Pass, "keyset query", "")
	expect(t, r, "close_code:incident", doctor.Pass, `"Solution provided"`, "")
	expect(t, r, "audit_delete:incident", doctor.Warn, "found by the presence scan", "sys_audit_delete")
	for _, c := range r.Checks {
		if c.Status == doctor.Warn && c.ID != "audit_delete:incident" {
			t.Errorf("unexpected warning %s: %s", c.ID, c.Detail)
		}
	}
	var b strings.Builder
	_ = r.WriteText(&b)
	if !strings.Contains(b.String(), "⚠ sys_audit_delete for incident") || !strings.Contains(b.String(), "all checks passed, 1 warning(s)") {
		t.Errorf("text report does not show the warning:\n%s", b.String())
	}
}

func TestDoctor_CloseCode(t *testing.T) {
	t.Run("retired code configured", func(t *testing.T) {
		in := newInstance(t, nil)
		opt := in.options()
		opt.CloseCode = "Solved (Permanently)"
		r := run(t, "BRIDGE_CLOSE_CODE retired", opt)
		expect(t, r, "close_code:incident", doctor.Fail, `BRIDGE_CLOSE_CODE "Solved (Permanently)" is not an active choice`, "BRIDGE_CLOSE_CODE")
		if c := check(t, r, "close_code:incident"); !strings.Contains(c.Detail, `"Solution provided"`) {
			t.Errorf("detail %q does not list the valid choices", c.Detail)
		}
	})
	t.Run("older release without the preferred code", func(t *testing.T) {
		in := newInstance(t, nil)
		if err := in.sim.SetChoices("incident", "close_code", snsim.LegacyCloseCodes()); err != nil {
			t.Fatal(err)
		}
		r := run(t, "older release", in.options())
		expect(t, r, "close_code:incident", doctor.Pass, `"Solved (Work Around)"`, "")
	})
	t.Run("active configured code", func(t *testing.T) {
		in := newInstance(t, nil)
		opt := in.options()
		opt.CloseCode = "Workaround provided"
		r := run(t, "BRIDGE_CLOSE_CODE active", opt)
		expect(t, r, "close_code:incident", doctor.Pass, `"Workaround provided" (BRIDGE_CLOSE_CODE, an active choice`, "")
	})
}

func TestDoctor_TokenExchangeRejected(t *testing.T) {
	in := newInstance(t, nil)
	in.sim.SetOAuthMode(snsim.OAuthGrantDisabled)
	r := run(t, "grant disabled", in.options())
	expect(t, r, "token", doctor.Fail, "401", "glide.oauth.inbound.client.credential.grant_type.enabled")
	expect(t, r, "table:incident", doctor.Skip, "needs a token", "", "token")

	in2 := newInstance(t, nil)
	opt := in2.options()
	opt.ClientSecret = "wrong"
	r = run(t, "wrong client secret", opt)
	expect(t, r, "token", doctor.Fail, "access_denied", "BRIDGE_SN_CLIENT_SECRET")
}

func TestDoctor_TokenIssuedButAPIAnswers401(t *testing.T) {
	in := newInstance(t, nil)
	in.sim.SetOAuthMode(snsim.OAuthTokenNotAuthenticated)
	r := run(t, "no OAuth Application User", in.options())
	expect(t, r, "token", doctor.Pass, "token issued", "", "auth")
	expect(t, r, "auth", doctor.Fail, "answered 401", "OAuth Application User")
}

func TestDoctor_NoRolesHidesEveryCountedRow(t *testing.T) {
	in := newInstance(t, nil)
	in.sim.SetACL(snsim.ACL{NoRoles: true})
	r := run(t, "no roles", in.options())
	expect(t, r, "table:incident", doctor.Fail, "X-Total-Count is 2 but none of the first 2 rows came back", "no role that may read the table",
		"close_code:incident")
	if c := check(t, r, "table:incident"); !strings.Contains(c.Fix, "snc_platform_rest_api_access and itil") {
		t.Errorf("fix %q does not name the roles", c.Fix)
	}
	// No roles, no dictionary either: nothing to say about the fields.
	expect(t, r, "fields:incident", doctor.Skip, "sys_dictionary is not readable", "", "table:incident", "close_code:incident")
}

func TestDoctor_RowACLHidesSomeCountedRows(t *testing.T) {
	// Row ACLs apply after the limit; whichever row comes first, the
	// verdict is "readable, some rows hidden", never "no role".
	verdicts := map[doctor.Status]int{}
	for _, hidden := range []string{"Email down", "VPN flaps"} {
		in := newInstance(t, nil)
		in.sim.SetGrants(snsim.Grants{Dictionary: true})
		in.sim.SetACL(snsim.ACL{HideRow: func(table string, rec snsim.Record) bool {
			return table == "incident" && rec["short_description"] == hidden
		}})
		r := run(t, "row ACL hides "+hidden, in.options())
		c := check(t, r, "table:incident")
		verdicts[c.Status]++
		switch c.Status {
		case doctor.Pass:
			expect(t, r, "table:incident", doctor.Pass, "2 rows readable", "")
		case doctor.Warn:
			expect(t, r, "table:incident", doctor.Warn, "1 of the first 2 counted rows are readable", "row-level ACLs")
		default:
			t.Errorf("row ACL hiding %q: table check %s (%s), want pass or warn", hidden, c.Status, c.Detail)
		}
		expect(t, r, "fields:incident", doctor.Pass, "", "")
	}
	if verdicts[doctor.Warn] != 1 {
		t.Errorf("verdicts %v: hiding the first row must warn once", verdicts)
	}
}

func TestDoctor_MappedFieldsMissing(t *testing.T) {
	in := newInstance(t, nil)
	in.sim.SetACL(snsim.ACL{HiddenFields: map[string][]string{"incident": {"work_notes"}}})
	opt := in.options()
	opt.Fields = map[string][]string{"incident": append([]string{"u_vendor_ref"}, incidentFields...)}
	r := run(t, "field ACL and a wrong field name, sys_dictionary hidden", opt)
	expect(t, r, "fields:incident", doctor.Fail, "missing from the answer: u_vendor_ref, work_notes", "grant read on sys_dictionary to tell which")

	in.sim.SetGrants(snsim.Grants{Dictionary: true})
	r = run(t, "field ACL and a wrong field name, sys_dictionary granted", opt)
	expect(t, r, "fields:incident", doctor.Fail, "not fields of incident: u_vendor_ref; hidden by a field ACL: work_notes", "u_ field")
	if c := check(t, r, "fields:incident"); !strings.Contains(c.Fix, "field-level read ACL") {
		t.Errorf("fix %q does not name the field ACL", c.Fix)
	}
}

func TestDoctor_AuditDeleteGranted(t *testing.T) {
	in := newInstance(t, nil)
	in.sim.SetGrants(snsim.Grants{AuditDelete: true})
	if err := in.sim.Delete("incident", in.sim.IDs("incident")[0], "admin"); err != nil {
		t.Fatal(err)
	}
	r := run(t, "sys_audit_delete granted", in.options())
	expect(t, r, "audit_delete:incident", doctor.Pass, "readable", "")
}

func TestDoctor_WriteProbeRefused(t *testing.T) {
	in := newInstance(t, nil)
	in.sim.SetACL(snsim.ACL{DenyWrites: true})
	opt := in.options()
	opt.WriteProbe = true
	r := run(t, "writes denied", opt)
	expect(t, r, "write_probe:incident", doctor.Fail, "create: ", "itil")

	opt.WriteProbe = false
	r = run(t, "write probe off", opt)
	expect(t, r, "write_probe:incident", doctor.Skip, "--write-probe", "")
}

func TestDoctor_ClockSkew(t *testing.T) {
	skewed := func() time.Time { return time.Now().Add(7 * time.Minute) }
	in := newInstance(t, skewed)
	r := run(t, "instance clock 7 minutes ahead", in.options())
	expect(t, r, "clock", doctor.Fail, "7m0s ahead of this host's", "NTP")
}

func TestDoctor_RateLimited(t *testing.T) {
	in := newInstance(t, nil)
	in.sim.SetRateLimitRules([]snsim.RateLimitRule{{Count: 2}})
	r := run(t, "rate limit rule exhausted", in.options())
	// The auth and dictionary reads use the rule's two requests; the table
	// read is the first one refused, and every read after it.
	expect(t, r, "rate_limit", doctor.Fail, "429 Too Many Requests", "sys_rate_limit_rules",
		"table:incident", "scan:incident", "close_code:incident")
	expect(t, r, "table:incident", doctor.Fail, "429", "BRIDGE_SN_RATE_LIMIT",
		"rate_limit", "scan:incident", "close_code:incident")
}

func TestDoctor_WebhookEndpoint(t *testing.T) {
	in := newInstance(t, nil)
	key, other := webhookKey(t, 1), webhookKey(t, 2)
	rcv := receiver(t, key)
	open := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) }))
	defer open.Close()
	gone := httptest.NewServer(http.NotFoundHandler())
	goneURL := gone.URL
	gone.Close()

	cases := []struct {
		name, url string
		secrets   []webhook.Secret
		detail    string
		fix       string
	}{
		{"bridge not running", goneURL + "/webhooks/servicenow", []webhook.Secret{key}, "POST " + goneURL, "start the bridge"},
		{"secret mismatch", rcv.URL + "/webhooks/servicenow", []webhook.Secret{other, key}, "got 401", "rejects our signature"},
		{"no secret configured", rcv.URL + "/webhooks/servicenow", nil, "no webhook secret", "BRIDGE_WEBHOOK_SECRETS"},
		{"wrong path", rcv.URL + "/webhook", []webhook.Secret{key}, "answered 404", "/webhooks/servicenow"},
		{"endpoint accepts unsigned requests", open.URL + "/webhooks/servicenow", []webhook.Secret{key}, "unsigned probe got 202", "not the nowbridge receiver"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			opt := in.options()
			opt.WebhookURL, opt.WebhookSecrets = c.url, c.secrets
			r := run(t, "webhook: "+c.name, opt)
			expect(t, r, "webhook", doctor.Fail, c.detail, c.fix)
		})
	}
}

func TestReport_TextMarksAndFixes(t *testing.T) {
	r := doctor.Report{Instance: "https://x.service-now.com", Checks: []doctor.Check{
		{ID: "a", Title: "A", Status: doctor.Pass, Detail: "fine"},
		{ID: "b", Title: "B", Status: doctor.Fail, Detail: "broken", Fix: "do this"},
		{ID: "c", Title: "C", Status: doctor.Skip, Detail: "not run"},
		{ID: "d", Title: "D", Status: doctor.Warn, Detail: "works", Fix: "grant that"},
	}}
	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	want := "bridge doctor: https://x.service-now.com\n\n✓ A: fine\n✗ B: broken\n    fix: do this\n– C: not run\n⚠ D: works\n    fix: grant that\n\n1 check(s) failed\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}
