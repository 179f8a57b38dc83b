package servicenow_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/webhook"
	"github.com/nowbridge/nowbridge/servicenow"
)

var updateVectors = flag.Bool("update-vectors", false, "rewrite body and headers of testdata/webhook_vectors.json from what the JavaScript sends")

const (
	vectorsFile = "testdata/webhook_vectors.json"
	webhookURL  = "https://bridge.example.test/webhooks/servicenow"
	// A second secret for rotation scenarios; the vectors' secret is the other one.
	newSecret = "whsec_Q+OiBHgLKj/HendaShYgncYWW5GfgJ9dzSKao4DmPn4="
)

var journalFields = []string{"comments", "work_notes"}

type vectorFile struct {
	Description string   `json:"description"`
	Secret      string   `json:"secret"`
	Timestamp   int64    `json:"timestamp"`
	Vectors     []vector `json:"vectors"`
}

type vector struct {
	Name             string          `json:"name"`
	Note             string          `json:"note"`
	Event            json.RawMessage `json:"event"`
	Body             string          `json:"body"`
	WebhookID        string          `json:"webhook_id"`
	WebhookSignature string          `json:"webhook_signature"`
}

// scenario is one business-rule run in the Node.js shim (contract/run.js).
type scenario struct {
	Name       string            `json:"name"`
	Rule       string            `json:"rule"`
	Condition  string            `json:"condition"`
	Properties map[string]string `json:"properties"`
	User       string            `json:"user"`
	NowMS      int64             `json:"now_ms"`
	Record     shimRecord        `json:"record"`
	Response   *shimResponse     `json:"response,omitempty"`
	// Resource runs a Scripted REST resource script (rest_api/) instead of a rule.
	Resource string `json:"resource,omitempty"`
	// GUID is what gs.generateGUID returns.
	GUID string `json:"guid,omitempty"`
	// MacCharset makes generateMac sign in this Java charset instead of UTF-8.
	MacCharset string `json:"mac_charset,omitempty"`
}

type shimRecord struct {
	Table         string            `json:"table"`
	Operation     string            `json:"operation"`
	Values        map[string]string `json:"values"`
	Journal       map[string]string `json:"journal"`
	JournalFields []string          `json:"journal_fields"`
	Changed       []string          `json:"changed"`
	AnyChange     *bool             `json:"any_change,omitempty"`
}

type shimResponse struct {
	Status int    `json:"status"`
	Body   string `json:"body,omitempty"`
	Error  string `json:"error,omitempty"`
	Throw  string `json:"throw,omitempty"`
}

type result struct {
	Name      string        `json:"name"`
	Condition bool          `json:"condition"`
	Requests  []shimRequest `json:"requests"`
	Logs      []logLine     `json:"logs"`
	Error     string        `json:"error"`
	REST      *restAnswer   `json:"rest"`
}

// restAnswer is what a Scripted REST resource set on its response.
type restAnswer struct {
	Status      int             `json:"status"`
	ContentType string          `json:"content_type"`
	Body        json.RawMessage `json:"body"`
}

type shimRequest struct {
	Endpoint  string            `json:"endpoint"`
	Method    string            `json:"method"`
	Headers   map[string]string `json:"headers"`
	Body      string            `json:"body"`
	TimeoutMS int               `json:"timeout_ms"`
	Mode      string            `json:"mode"`
	WaitedS   int               `json:"waited_s"`
}

type logLine struct {
	Level string `json:"level"`
	Msg   string `json:"msg"`
}

func nodePath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not found on PATH: this contract test runs the shipped business-rule scripts with Node.js (v18 or newer); install Node.js to run it")
	}
	return p
}

// runNode runs the scenarios through the shim and returns one result each.
func runNode(t *testing.T, scs []scenario) []result {
	t.Helper()
	node := nodePath(t)
	in, err := json.Marshal(scs)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "contract/run.js", "business_rules")
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node contract/run.js: %v\n%s", err, stderr.String())
	}
	var res []result
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("decode node output: %v\n%s", err, out)
	}
	if len(res) != len(scs) {
		t.Fatalf("node returned %d results for %d scenarios", len(res), len(scs))
	}
	for i, r := range res {
		if r.Error != "" {
			t.Fatalf("scenario %q: the script threw: %s", scs[i].Name, r.Error)
		}
	}
	return res
}

func loadVectors(t *testing.T) vectorFile {
	t.Helper()
	b, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	var vf vectorFile
	if err := json.Unmarshal(b, &vf); err != nil {
		t.Fatalf("%s: %v", vectorsFile, err)
	}
	return vf
}

func decodeEvent(t *testing.T, raw json.RawMessage) events.SNEvent {
	t.Helper()
	var ev events.SNEvent
	if err := json.Unmarshal(raw, &ev); err != nil {
		t.Fatalf("vector event: %v", err)
	}
	return ev
}

// scenarioFor turns an event into the GlideRecord state that produces it:
// the record's values through getValue, journal fields through
// getJournalEntry(1), changes() true for the changed fields.
func scenarioFor(ev events.SNEvent, secretProp string, ts int64) scenario {
	values := map[string]string{
		"sys_id":         ev.SysID,
		"sys_mod_count":  strconv.FormatInt(int64(ev.SysModCount), 10),
		"sys_updated_on": ev.SysUpdatedOn,
		"sys_updated_by": ev.SysUpdatedBy,
	}
	journal := map[string]string{}
	var keys []string
	for k, v := range ev.Record {
		keys = append(keys, k)
		if slices.Contains(journalFields, k) {
			journal[k] = v
		} else {
			values[k] = v
		}
	}
	props := map[string]string{
		"instance_name":            ev.Instance,
		"nowbridge.webhook_url":    webhookURL,
		"nowbridge.webhook_secret": secretProp,
	}
	// A table's default list is exercised as is; any other record gets
	// its field list in reverse order, to prove the script sorts.
	slices.Sort(keys)
	def := servicenow.DefaultFieldList(ev.Table)
	slices.Sort(def)
	if !slices.Equal(keys, def) {
		slices.Reverse(keys)
		props["nowbridge.fields."+ev.Table] = strings.Join(keys, ",")
	}
	// incident is sent by default; any other table must be listed.
	if ev.Table != servicenow.DefaultSyncedTables {
		props["nowbridge.tables"] = servicenow.DefaultSyncedTables + "," + ev.Table
	}
	rule := "webhook_insert_update.js"
	if ev.Action == events.ActionDelete {
		rule = "webhook_delete.js"
	}
	changed := slices.Clone(ev.Changed)
	slices.Reverse(changed)
	return scenario{
		Name:       ev.Action,
		Rule:       rule,
		Condition:  servicenow.ConditionScript,
		Properties: props,
		User:       ev.SysUpdatedBy,
		NowMS:      ts*1000 + 999, // the script must floor milliseconds to seconds
		Record: shimRecord{
			Table: ev.Table, Operation: ev.Action, Values: values, Journal: journal,
			JournalFields: journalFields, Changed: changed,
		},
	}
}

func mustSecrets(t *testing.T, list ...string) []webhook.Secret {
	t.Helper()
	var out []webhook.Secret
	for _, s := range list {
		sec, err := webhook.ParseSecret(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, sec)
	}
	return out
}

// deliver checks one captured request the way the bridge's receiver does:
// Standard Webhooks verification with the bridge's secrets at the bridge's
// clock, then the ingest validator.
func deliver(t *testing.T, req shimRequest, now time.Time, secrets ...string) ([]events.SNEvent, error) {
	t.Helper()
	v := webhook.Verifier{Secrets: mustSecrets(t, secrets...), Tolerance: 5 * time.Minute, Now: func() time.Time { return now }}
	h := req.Headers
	if err := v.Verify(h["webhook-id"], h["webhook-timestamp"], h["webhook-signature"], []byte(req.Body)); err != nil {
		return nil, err
	}
	return events.NewValidator(servicenow.ShippedTables()).DecodeBody([]byte(req.Body))
}

func onlyRequest(t *testing.T, r result) shimRequest {
	t.Helper()
	if len(r.Requests) != 1 {
		t.Fatalf("%s: the rule sent %d requests, want 1 (logs: %v)", r.Name, len(r.Requests), r.Logs)
	}
	req := r.Requests[0]
	if req.Mode != "async" || req.Method != "post" || req.Endpoint != webhookURL {
		t.Errorf("%s: sent %s %s with %s, want post %s with executeAsync", r.Name, req.Method, req.Endpoint, req.Mode, webhookURL)
	}
	if req.TimeoutMS != 10000 {
		t.Errorf("%s: setHttpTimeout(%d), want the default 10000", r.Name, req.TimeoutMS)
	}
	if req.Headers["Content-Type"] != "application/json; charset=utf-8" {
		t.Errorf("%s: Content-Type %q, want application/json; charset=utf-8", r.Name, req.Headers["Content-Type"])
	}
	return req
}

// TestContract_Vectors runs the real scripts for every shared vector and
// requires the exact body and headers, a signature the bridge's verifier
// accepts, an event the ingest validator accepts unchanged, and Go's
// EncodeWebhookBody producing the same bytes.
func TestContract_Vectors(t *testing.T) {
	vf := loadVectors(t)
	var scs []scenario
	var evs []events.SNEvent
	for _, v := range vf.Vectors {
		ev := decodeEvent(t, v.Event)
		sc := scenarioFor(ev, vf.Secret, vf.Timestamp)
		sc.Name = v.Name
		scs = append(scs, sc)
		evs = append(evs, ev)
	}
	res := runNode(t, scs)
	now := time.Unix(vf.Timestamp, 0)

	if *updateVectors {
		for i, r := range res {
			req := onlyRequest(t, r)
			vf.Vectors[i].Body = req.Body
			vf.Vectors[i].WebhookID = req.Headers["webhook-id"]
			vf.Vectors[i].WebhookSignature = req.Headers["webhook-signature"]
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		if err := enc.Encode(vf); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vectorsFile, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("rewrote %s: review the diff before committing", vectorsFile)
	}

	for i, r := range res {
		v, ev := vf.Vectors[i], evs[i]
		t.Run(v.Name, func(t *testing.T) {
			req := onlyRequest(t, r)
			if req.Body != v.Body {
				t.Errorf("JavaScript body differs from the vector\n got: %s\nwant: %s", req.Body, v.Body)
			}
			goBody, err := events.EncodeWebhookBody(&ev)
			if err != nil {
				t.Fatal(err)
			}
			if string(goBody) != req.Body {
				t.Errorf("Go's EncodeWebhookBody differs from the JavaScript body\n  go: %s\n  js: %s", goBody, req.Body)
			}
			wantID := events.MsgID(ev.Table, ev.SysID, int64(ev.SysModCount), ev.Action)
			if got := req.Headers["webhook-id"]; got != wantID || got != v.WebhookID {
				t.Errorf("webhook-id %q, want %q (vector %q)", got, wantID, v.WebhookID)
			}
			if got := req.Headers["webhook-timestamp"]; got != strconv.FormatInt(vf.Timestamp, 10) {
				t.Errorf("webhook-timestamp %q, want %d (Unix seconds, floored)", got, vf.Timestamp)
			}
			goSig := webhook.Sign(mustSecrets(t, vf.Secret)[0], wantID, vf.Timestamp, goBody)
			if got := req.Headers["webhook-signature"]; got != goSig || got != v.WebhookSignature {
				t.Errorf("webhook-signature %q, want %q from Go's Sign (vector %q)", got, goSig, v.WebhookSignature)
			}
			got, err := deliver(t, req, now, vf.Secret)
			if err != nil {
				t.Fatalf("the bridge rejects what the rule sent: %v", err)
			}
			if len(got) != 1 {
				t.Fatalf("decoded %d events, want 1", len(got))
			}
			want := ev
			if len(want.Changed) == 0 {
				want.Changed = nil
			}
			if !reflect.DeepEqual(got[0], want) {
				t.Errorf("validator decoded\n %+v\nwant\n %+v", got[0], want)
			}
			if len(r.Logs) != 0 {
				t.Errorf("a good send logged %v, want nothing", r.Logs)
			}
		})
	}
}

// TestContract_SecretRotation: the rule signs with the property's secret(s);
// the bridge accepts any of its configured secrets.
func TestContract_SecretRotation(t *testing.T) {
	vf := loadVectors(t)
	old := vf.Secret
	ev := decodeEvent(t, vf.Vectors[1].Event)
	ts := time.Now().Unix()
	cases := []struct {
		name     string
		property string
		bridge   []string
		wantErr  error
		wantSigs int
	}{
		{"bridge lists new and old, instance still signs with old", old, []string{newSecret, old}, nil, 1},
		{"instance signs with new and old, bridge not yet updated", newSecret + "," + old, []string{old}, nil, 2},
		{"instance signs with new and old, bridge already moved", newSecret + ", " + old, []string{newSecret}, nil, 2},
		{"bridge dropped the secret the instance uses", old, []string{newSecret}, webhook.ErrNoMatchingSig, 1},
		{"property without the whsec_ prefix", strings.TrimPrefix(old, "whsec_"), []string{old}, nil, 1},
	}
	var scs []scenario
	for _, c := range cases {
		sc := scenarioFor(ev, c.property, ts)
		sc.Name = c.name
		scs = append(scs, sc)
	}
	res := runNode(t, scs)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := onlyRequest(t, res[i])
			if n := len(strings.Fields(req.Headers["webhook-signature"])); n != c.wantSigs {
				t.Errorf("webhook-signature has %d entries, want %d", n, c.wantSigs)
			}
			_, err := deliver(t, req, time.Unix(ts, 0), c.bridge...)
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("bridge verdict %v, want %v", err, c.wantErr)
			}
		})
	}
}

// TestContract_TamperedOrLateRequestRejected: what the rule signs is bound to
// the body and to the clock.
func TestContract_TamperedOrLateRequestRejected(t *testing.T) {
	vf := loadVectors(t)
	ev := decodeEvent(t, vf.Vectors[0].Event)
	res := runNode(t, []scenario{scenarioFor(ev, vf.Secret, vf.Timestamp)})
	req := onlyRequest(t, res[0])
	tampered := req
	tampered.Body = strings.Replace(req.Body, "Email down", "Email up", 1)
	if _, err := deliver(t, tampered, time.Unix(vf.Timestamp, 0), vf.Secret); !errors.Is(err, webhook.ErrNoMatchingSig) {
		t.Errorf("tampered body: %v, want ErrNoMatchingSig", err)
	}
	if _, err := deliver(t, req, time.Unix(vf.Timestamp, 0).Add(6*time.Minute), vf.Secret); !errors.Is(err, webhook.ErrTimestampSkew) {
		t.Errorf("delivered 6 minutes late: %v, want ErrTimestampSkew", err)
	}
}

// TestContract_Condition: the optional integration-user skip, the kill
// switch, and updates that wrote nothing.
func TestContract_Condition(t *testing.T) {
	vf := loadVectors(t)
	ev := decodeEvent(t, vf.Vectors[2].Event) // written by integration.nowbridge
	ts := vf.Timestamp
	base := func(name string) scenario {
		sc := scenarioFor(ev, vf.Secret, ts)
		sc.Name = name
		return sc
	}
	skipSelf := base("skip_user names the writer")
	skipSelf.Properties["nowbridge.skip_user"] = "integration.nowbridge"
	skipOther := base("skip_user names someone else")
	skipOther.Properties["nowbridge.skip_user"] = "integration.nowbridge"
	skipOther.User = "beth.anglin"
	disabled := base("disabled")
	disabled.Properties["nowbridge.enabled"] = "false"
	noChange := base("update that changed nothing")
	f := false
	noChange.Record.Changed = nil
	noChange.Record.AnyChange = &f
	otherFieldOnly := base("update of an unsynced field only")
	tr := true
	otherFieldOnly.Record.Changed = nil
	otherFieldOnly.Record.AnyChange = &tr

	res := runNode(t, []scenario{skipSelf, skipOther, disabled, noChange, otherFieldOnly})
	if res[0].Condition || len(res[0].Requests) != 0 {
		t.Errorf("skip_user = writer: condition %v, %d requests; want false, 0", res[0].Condition, len(res[0].Requests))
	}
	if !res[1].Condition {
		t.Errorf("skip_user = someone else: condition false, want true")
	}
	onlyRequest(t, res[1])
	if res[2].Condition || len(res[2].Requests) != 0 {
		t.Errorf("nowbridge.enabled=false: condition %v, %d requests; want false, 0", res[2].Condition, len(res[2].Requests))
	}
	if len(res[3].Requests) != 0 {
		t.Errorf("an update that changed nothing sent %d requests, want 0", len(res[3].Requests))
	}
	req := onlyRequest(t, res[4])
	if strings.Contains(req.Body, `"changed"`) || !strings.Contains(req.Body, `"work_notes":""`) {
		t.Errorf("update of an unsynced field: body %s, want no changed list and an empty work_notes", req.Body)
	}
}

// TestContract_FailuresAreLoggedWithoutTheSecret: every failure path logs
// what to fix, with the HTTP status where there is one, and no log line
// holds the secret in any form.
func TestContract_FailuresAreLoggedWithoutTheSecret(t *testing.T) {
	vf := loadVectors(t)
	ev := decodeEvent(t, vf.Vectors[1].Event)
	base := func(name string) scenario {
		sc := scenarioFor(ev, vf.Secret, vf.Timestamp)
		sc.Name = name
		sc.Properties["nowbridge.response_wait_seconds"] = "5"
		return sc
	}
	unauthorized := base("401")
	unauthorized.Response = &shimResponse{Status: 401, Body: `{"error":"invalid signature"}`}
	unavailable := base("503")
	unavailable.Response = &shimResponse{Status: 503, Body: `{"error":"jetstream unavailable"}`}
	unreachable := base("no response")
	unreachable.Response = &shimResponse{Status: 0, Error: "Connection refused"}
	threw := base("executeAsync throws")
	threw.Response = &shimResponse{Throw: "Invalid endpoint"}
	noSecret := base("secret missing")
	delete(noSecret.Properties, "nowbridge.webhook_secret")
	noURL := base("url missing")
	noURL.Properties["nowbridge.webhook_url"] = ""
	badField := base("unknown field listed")
	badField.Properties["nowbridge.fields.incident"] = "u_vendor_ref," + servicenow.DefaultIncidentFields
	ok := base("202 while waiting")
	ok.Response = &shimResponse{Status: 202, Body: `{"accepted":1}`}

	scs := []scenario{unauthorized, unavailable, unreachable, threw, noSecret, noURL, badField, ok}
	res := runNode(t, scs)
	want := []struct {
		level, substr string
		requests      int
	}{
		{"error", "failed: HTTP 401 (signature or clock rejected", 1},
		{"warn", "failed: HTTP 503 (the bridge could not store it now", 1},
		{"error", "failed: HTTP 0 (no response", 1},
		{"error", "was not sent: Invalid endpoint", 0},
		{"error", "nowbridge.webhook_secret is empty", 0},
		{"error", "nowbridge.webhook_url is empty", 0},
		{"warn", "has no field u_vendor_ref", 1},
		{"", "", 1},
	}
	key := strings.TrimPrefix(vf.Secret, "whsec_")
	rawKey, _ := base64.StdEncoding.DecodeString(key)
	for i, w := range want {
		r := res[i]
		if len(r.Requests) != w.requests {
			t.Errorf("%s: %d requests, want %d", r.Name, len(r.Requests), w.requests)
		}
		if w.requests == 1 && w.substr != "" && scs[i].Response != nil && r.Requests[0].WaitedS != 5 {
			t.Errorf("%s: waited %d s for the response, want nowbridge.response_wait_seconds = 5", r.Name, r.Requests[0].WaitedS)
		}
		if w.level == "" {
			if len(r.Logs) != 0 {
				t.Errorf("%s: logged %v, want nothing", r.Name, r.Logs)
			}
			continue
		}
		found := false
		for _, l := range r.Logs {
			if l.Level == w.level && strings.Contains(l.Msg, w.substr) {
				found = true
			}
			if strings.Contains(l.Msg, key) || strings.Contains(l.Msg, vf.Secret) || strings.Contains(l.Msg, string(rawKey)) {
				t.Errorf("%s: a log line holds the secret", r.Name)
			}
		}
		if !found {
			t.Errorf("%s: logs %v, want a %s line containing %q", r.Name, r.Logs, w.level, w.substr)
		}
	}
	// Without response_wait_seconds the rule does not wait: fire and forget.
	nowait := scenarioFor(ev, vf.Secret, vf.Timestamp)
	nowait.Response = &shimResponse{Status: 401}
	r := runNode(t, []scenario{nowait})[0]
	if req := onlyRequest(t, r); req.WaitedS != 0 || len(r.Logs) != 0 {
		t.Errorf("default: waited %d s and logged %v, want no wait and no log", req.WaitedS, r.Logs)
	}
}

// TestContract_InvalidUTF8MatchesTextDecoder: Go's EncodeWebhookBody replaces
// invalid UTF-8 the way a JavaScript engine sees the same bytes after
// TextDecoder, and JSON.stringify then escapes nothing more.
func TestContract_InvalidUTF8MatchesTextDecoder(t *testing.T) {
	node := nodePath(t)
	inputs := [][]byte{
		[]byte("ok \xe2\x80\xa8 \xf0\x9f\x9a\x80"),
		[]byte("\xff"), []byte("a\xc3"), []byte("\xe2\x82A"), []byte("\xf0\x80\x80"),
		[]byte("\xed\xa0\x80x"), []byte("\xf4\x90\x80\x80"), []byte("\xe0\x80\xaf"),
		[]byte("\xf0\x9f\x98"), []byte("\xc0\xaf\x80"), []byte("\x01\x7f\"\\</>"),
	}
	var b64 []string
	for _, in := range inputs {
		b64 = append(b64, base64.StdEncoding.EncodeToString(in))
	}
	arg, _ := json.Marshal(b64)
	script := `const ins = JSON.parse(process.argv[1]);
process.stdout.write(JSON.stringify(ins.map((b) => Buffer.from(JSON.stringify(new TextDecoder().decode(Buffer.from(b, 'base64'))), 'utf8').toString('base64'))));`
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, node, "-e", script, string(arg)).Output()
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	var js []string
	if err := json.Unmarshal(out, &js); err != nil {
		t.Fatal(err)
	}
	for i, in := range inputs {
		want, _ := base64.StdEncoding.DecodeString(js[i])
		body, err := events.EncodeWebhookBody(&events.SNEvent{Record: events.Fields{"x": string(in)}})
		if err != nil {
			t.Fatal(err)
		}
		_, got, _ := bytes.Cut(body, []byte(`"record":{"x":`))
		got = bytes.TrimSuffix(got, []byte("}}"))
		if !bytes.Equal(got, want) {
			t.Errorf("bytes %q: Go %q, JavaScript %q", in, got, want)
		}
	}
}

// TestContract_DefaultFieldsMatchGo: NowbridgeWebhook.DEFAULT_FIELDS and
// DEFAULT_TABLES, read from the script itself, are what the Go mirror
// (servicenow.DefaultFields, DefaultSyncedTables) says, table by table.
func TestContract_DefaultFieldsMatchGo(t *testing.T) {
	node := nodePath(t)
	script := `const vm = require('node:vm');
const fs = require('node:fs');
const { newGlobals } = require('./contract/glide_shim.js');
const ctx = vm.createContext(newGlobals({}).globals);
vm.runInContext(fs.readFileSync('business_rules/NowbridgeWebhook.js', 'utf8'), ctx);
process.stdout.write(JSON.stringify({ fields: ctx.NowbridgeWebhook.DEFAULT_FIELDS, tables: ctx.NowbridgeWebhook.DEFAULT_TABLES }));`
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, node, "-e", script).Output()
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	var js struct {
		Fields map[string]string `json:"fields"`
		Tables string            `json:"tables"`
	}
	if err := json.Unmarshal(out, &js); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}
	if js.Tables != servicenow.DefaultSyncedTables {
		t.Errorf("DEFAULT_TABLES %q, Go DefaultSyncedTables %q", js.Tables, servicenow.DefaultSyncedTables)
	}
	if len(js.Fields) != len(servicenow.ShippedTables()) {
		t.Errorf("DEFAULT_FIELDS has %d tables, want the %d shipped ones: %v", len(js.Fields), len(servicenow.ShippedTables()), js.Fields)
	}
	for _, table := range servicenow.ShippedTables() {
		if js.Fields[table] != servicenow.DefaultFields(table) {
			t.Errorf("DEFAULT_FIELDS.%s\n  js: %q\n  go: %q", table, js.Fields[table], servicenow.DefaultFields(table))
		}
	}
}

// TestContract_TablesProperty: a table's rules send only while
// nowbridge.tables lists it; the property missing or empty means incident;
// entries are trimmed. The rules of the HR scope reach the include as
// global.NowbridgeWebhook like any other.
func TestContract_TablesProperty(t *testing.T) {
	vf := loadVectors(t)
	var change, hr events.SNEvent
	for _, v := range vf.Vectors {
		switch ev := decodeEvent(t, v.Event); {
		case ev.Table == "change_request" && change.Table == "":
			change = ev
		case ev.Table == "sn_hr_core_case" && hr.Table == "":
			hr = ev
		}
	}
	if change.Table == "" || hr.Table == "" {
		t.Fatal("the vectors hold no change_request or sn_hr_core_case event")
	}
	incident := decodeEvent(t, vf.Vectors[0].Event)
	cases := []struct {
		name   string
		ev     events.SNEvent
		tables *string // nil: the property does not exist
		send   bool
	}{
		{"incident, property missing", incident, nil, true},
		{"incident, property empty", incident, ptr(""), true},
		{"change_request, property missing", change, nil, false},
		{"change_request, only incident listed", change, ptr("incident"), false},
		{"change_request listed with spaces", change, ptr(" incident , change_request "), true},
		{"incident not listed", incident, ptr("change_request"), false},
		{"HR case listed (rule of the HR scope)", hr, ptr("sn_hr_core_case"), true},
		{"HR case not listed", hr, ptr("incident,change_request"), false},
	}
	var scs []scenario
	for _, c := range cases {
		sc := scenarioFor(c.ev, vf.Secret, vf.Timestamp)
		sc.Name = c.name
		delete(sc.Properties, "nowbridge.tables")
		if c.tables != nil {
			sc.Properties["nowbridge.tables"] = *c.tables
		}
		scs = append(scs, sc)
	}
	res := runNode(t, scs)
	for i, c := range cases {
		if res[i].Condition != c.send {
			t.Errorf("%s: condition %v, want %v", c.name, res[i].Condition, c.send)
		}
		if c.send {
			req := onlyRequest(t, res[i])
			if _, err := deliver(t, req, time.Unix(vf.Timestamp, 0), vf.Secret); err != nil {
				t.Errorf("%s: the bridge rejects what the rule sent: %v", c.name, err)
			}
		} else if len(res[i].Requests) != 0 {
			t.Errorf("%s: %d requests, want none", c.name, len(res[i].Requests))
		}
	}
}

func ptr(s string) *string { return &s }
