package servicenow_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/inbound"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

const selfTestGUID = "f0e1d2c3b4a5968778695a4b3c2d1e0f"

// selfTestScenario runs the shipped resource script (rest_api/selftest.js)
// with the given secret property at Unix time ts.
func selfTestScenario(name, secretProp string, ts int64) scenario {
	return scenario{
		Name:     name,
		Resource: "selftest.js",
		Properties: map[string]string{
			"instance_name":            "dev12345",
			"nowbridge.webhook_url":    webhookURL,
			"nowbridge.webhook_secret": secretProp,
		},
		User:  "nowbridge.integration",
		NowMS: ts*1000 + 250,
		GUID:  selfTestGUID,
	}
}

// outcome decodes what the resource answered, strictly: every member the
// script returns must be a field of events.SelfTestOutcome (doctor reads it).
func outcome(t *testing.T, r result) events.SelfTestOutcome {
	t.Helper()
	if r.REST == nil {
		t.Fatalf("%s: the resource set no response", r.Name)
	}
	if r.REST.Status != http.StatusOK || r.REST.ContentType != "application/json" {
		t.Errorf("%s: the resource answered %d %q, want 200 application/json", r.Name, r.REST.Status, r.REST.ContentType)
	}
	dec := json.NewDecoder(bytes.NewReader(r.REST.Body))
	dec.DisallowUnknownFields()
	var o events.SelfTestOutcome
	if err := dec.Decode(&o); err != nil {
		t.Fatalf("%s: the resource's body %s does not match events.SelfTestOutcome: %v", r.Name, r.REST.Body, err)
	}
	return o
}

func keyDescription(t *testing.T, secret string) events.SelfTestKey {
	t.Helper()
	s := mustSecrets(t, secret)[0]
	raw, _ := base64.StdEncoding.DecodeString(s.KeyBase64())
	return events.SelfTestKey{Prefixed: strings.HasPrefix(secret, "whsec_"), KeyBytes: len(raw), Check: events.SelfTestKeyCheck(s.KeyBase64())}
}

// TestContract_SelfTestSendsASignedUTF8TestEvent: the resource sends, with
// execute() (synchronously), the test event Go's EncodeSelfTestBody
// renders, under a self-test webhook-id, with the UTF-8 content type and a
// signature over the UTF-8 bytes of the non-ASCII text.
func TestContract_SelfTestSendsASignedUTF8TestEvent(t *testing.T) {
	vf := loadVectors(t)
	ts := vf.Timestamp
	rotation := selfTestScenario("two secrets", newSecret+", "+vf.Secret, ts)
	res := runNode(t, []scenario{selfTestScenario("one secret", vf.Secret, ts), rotation})
	for i, secrets := range [][]string{{vf.Secret}, {newSecret, vf.Secret}} {
		r := res[i]
		if len(r.Requests) != 1 {
			t.Fatalf("%s: %d requests, want 1", r.Name, len(r.Requests))
		}
		req := r.Requests[0]
		if req.Mode != "sync" || req.Method != "post" || req.Endpoint != webhookURL || req.TimeoutMS != 10000 {
			t.Errorf("%s: %s %s with %s (timeout %d), want a synchronous post to %s", r.Name, req.Method, req.Endpoint, req.Mode, req.TimeoutMS, webhookURL)
		}
		if got := req.Headers["Content-Type"]; got != "application/json; charset=utf-8" {
			t.Errorf("%s: Content-Type %q, want application/json; charset=utf-8", r.Name, got)
		}
		id := events.SelfTestIDPrefix + selfTestGUID
		if req.Headers[webhook.HeaderID] != id || !events.IsSelfTestID(req.Headers[webhook.HeaderID]) {
			t.Errorf("%s: webhook-id %q, want %q", r.Name, req.Headers[webhook.HeaderID], id)
		}
		var keys []events.SelfTestKey
		var sigs []string
		for _, s := range secrets {
			keys = append(keys, keyDescription(t, s))
			sigs = append(sigs, webhook.Sign(mustSecrets(t, s)[0], id, ts, []byte(req.Body)))
		}
		want := events.EncodeSelfTestBody(&events.SelfTestEvent{SelfTest: true, Instance: "dev12345", SentBy: "nowbridge.integration", Text: events.SelfTestText, Keys: keys})
		if req.Body != string(want) {
			t.Errorf("%s: body differs from Go's EncodeSelfTestBody\n  js: %s\n  go: %s", r.Name, req.Body, want)
		}
		if !strings.Contains(req.Body, "Café — 東京") {
			t.Errorf("%s: the body does not carry the text raw: %s", r.Name, req.Body)
		}
		// Over the UTF-8 bytes: Go's Sign over the body's UTF-8 form.
		if got := req.Headers[webhook.HeaderSignature]; got != strings.Join(sigs, " ") {
			t.Errorf("%s: webhook-signature %q, want %q (HMAC over the UTF-8 bytes)", r.Name, got, strings.Join(sigs, " "))
		}
		if _, err := deliverSelfTest(t, req, time.Unix(ts, 0), secrets[len(secrets)-1]); err != nil {
			t.Errorf("%s: the bridge's verifier rejects it: %v", r.Name, err)
		}
		for _, s := range secrets {
			key := strings.TrimPrefix(s, "whsec_")
			if strings.Contains(req.Body, key) || strings.Contains(string(r.REST.Body), key) || strings.Contains(req.Headers[webhook.HeaderSignature], key) {
				t.Errorf("%s: a key appears in what the self-test sends or answers", r.Name)
			}
		}
	}
}

func deliverSelfTest(t *testing.T, req shimRequest, now time.Time, secret string) (events.SelfTestEvent, error) {
	t.Helper()
	v := webhook.Verifier{Secrets: mustSecrets(t, secret), Tolerance: 5 * time.Minute, Now: func() time.Time { return now }}
	h := req.Headers
	var ev events.SelfTestEvent
	if err := v.Verify(h[webhook.HeaderID], h[webhook.HeaderTimestamp], h[webhook.HeaderSignature], []byte(req.Body)); err != nil {
		return ev, err
	}
	err := json.Unmarshal([]byte(req.Body), &ev)
	return ev, err
}

// TestContract_SelfTestAgainstTheRealReceiver runs the resource twice per
// case: once to capture what it sends, which goes to the bridge's real
// receiver, and once with the receiver's answer as the outbound response,
// to see what the resource reports. The instance-side failure modes each
// come back as the receiver's diagnosis; nothing reaches SN_EVENTS.
func TestContract_SelfTestAgainstTheRealReceiver(t *testing.T) {
	nodePath(t)
	vf := loadVectors(t)
	s := natstest.RunServer(t)
	nc, js := natstest.Connect(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	rcv, err := inbound.New(inbound.Config{Conn: nc, Secrets: mustSecrets(t, vf.Secret), Tables: []string{"incident"}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(rcv.Handler())
	defer srv.Close()

	// What an undecrypted password2 value looks like to the script: base64
	// without the whsec_ prefix, of a length no signing key has.
	encrypted := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x5a, 0xc3, 0x17}, 27))
	now := time.Now().Unix()
	cases := []struct {
		name, property, charset string
		asciiJSON               bool
		ok                      bool
		status                  int
		result                  string
	}{
		{"healthy", vf.Secret, "", false, true, 202, events.SelfTestOK},
		{"rotation, bridge has the old secret", newSecret + "," + vf.Secret, "", false, true, 202, events.SelfTestOK},
		{"property holds another secret", newSecret, "", false, false, 401, events.SelfTestSecretMismatch},
		{"property still encrypted", encrypted, "", false, false, 401, events.SelfTestSecretEncrypted},
		{"generateMac signs ISO-8859-1", vf.Secret, "ISO-8859-1", false, false, 401, events.SelfTestCharset},
		{"generateMac signs UTF-16", vf.Secret, "UTF-16", false, false, 401, events.SelfTestCharset},
		{"generateMac signs ISO-8859-1, ascii_json on", vf.Secret, "ISO-8859-1", true, true, 202, events.SelfTestOK},
	}
	var first []scenario
	for _, c := range cases {
		sc := selfTestScenario(c.name, c.property, now)
		sc.MacCharset = c.charset
		if c.asciiJSON {
			sc.Properties["nowbridge.ascii_json"] = "true"
		}
		first = append(first, sc)
	}
	sent := runNode(t, first)
	var second []scenario
	for i, c := range cases {
		if len(sent[i].Requests) != 1 {
			t.Fatalf("%s: %d requests, want 1 (outcome %s)", c.name, len(sent[i].Requests), sent[i].REST.Body)
		}
		status, body := postTo(t, ctx, srv.URL+inbound.Path, sent[i].Requests[0])
		sc := first[i]
		sc.Response = &shimResponse{Status: status, Body: body}
		second = append(second, sc)
	}
	got := runNode(t, second)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got[i].Requests[0].Body != sent[i].Requests[0].Body || got[i].Requests[0].Headers[webhook.HeaderSignature] != sent[i].Requests[0].Headers[webhook.HeaderSignature] {
				t.Fatal("the second run sent something else than the first: the scenario is not deterministic")
			}
			o := outcome(t, got[i])
			if o.OK != c.ok || o.Status != c.status || o.Result != c.result || o.Stage != events.SelfTestStageBridge {
				t.Fatalf("outcome ok=%v status=%d result=%q stage=%q, want ok=%v %d %q bridge (detail: %s)", o.OK, o.Status, o.Result, o.Stage, c.ok, c.status, c.result, o.Detail)
			}
			if o.Detail == "" || o.WebhookURL != webhookURL || o.WebhookID != events.SelfTestIDPrefix+selfTestGUID || o.Keys == 0 || o.ContentType != "application/json; charset=utf-8" {
				t.Errorf("outcome %+v: want the bridge's detail, the URL, the webhook-id, the key count and the content type", o)
			}
		})
	}
	stream, err := js.Stream(ctx, events.StreamSN)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 {
		t.Fatalf("SN_EVENTS holds %d messages after self-tests, want 0", info.State.Msgs)
	}
}

func postTo(t *testing.T, ctx context.Context, url string, req shimRequest) (int, string) {
	t.Helper()
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(req.Body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range req.Headers {
		r.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestContract_SelfTestReportsWhatStopsIt: a missing property stops the
// self-test before anything is sent (stage config, with what to set); an
// unreachable bridge is stage send with the platform's error; a receiver
// that is not the bridge is named.
func TestContract_SelfTestReportsWhatStopsIt(t *testing.T) {
	vf := loadVectors(t)
	ts := time.Now().Unix()
	noURL := selfTestScenario("url missing", vf.Secret, ts)
	noURL.Properties["nowbridge.webhook_url"] = ""
	noSecret := selfTestScenario("secret missing", "", ts)
	garbage := selfTestScenario("secret not base64", "ENC:#not-a-key!", ts)
	unreachable := selfTestScenario("bridge unreachable", vf.Secret, ts)
	unreachable.Response = &shimResponse{Status: 0, Error: "Connection refused: bridge.example.test/203.0.113.7:443"}
	threw := selfTestScenario("execute throws", vf.Secret, ts)
	threw.Response = &shimResponse{Throw: "Invalid endpoint"}
	notBridge := selfTestScenario("something else answers", vf.Secret, ts)
	notBridge.Response = &shimResponse{Status: 200, Body: "<html>login</html>"}
	res := runNode(t, []scenario{noURL, noSecret, garbage, unreachable, threw, notBridge})
	want := []struct {
		stage, errText, detail string
		requests               int
	}{
		{events.SelfTestStageConfig, "nowbridge.webhook_url is empty", "", 0},
		{events.SelfTestStageConfig, "nowbridge.webhook_secret is empty", "", 0},
		{events.SelfTestStageConfig, "encrypted form of the password2 property", "", 0},
		{events.SelfTestStageSend, "Connection refused: bridge.example.test", "", 1},
		{events.SelfTestStageSend, "Invalid endpoint", "", 0},
		{events.SelfTestStageBridge, "", "is " + webhookURL + " the nowbridge receiver?", 1},
	}
	for i, w := range want {
		r := res[i]
		o := outcome(t, r)
		if o.OK || o.Stage != w.stage || !strings.Contains(o.Error, w.errText) || !strings.Contains(o.Detail, w.detail) {
			t.Errorf("%s: outcome %+v, want not ok, stage %s, error containing %q, detail containing %q", r.Name, o, w.stage, w.errText, w.detail)
		}
		if len(r.Requests) != w.requests {
			t.Errorf("%s: %d requests, want %d", r.Name, len(r.Requests), w.requests)
		}
		if w.stage == events.SelfTestStageSend && o.Status != 0 {
			t.Errorf("%s: status %d without an answer", r.Name, o.Status)
		}
	}
	if o := outcome(t, res[5]); o.Status != 200 || o.Body != "<html>login</html>" {
		t.Errorf("a foreign answer: status %d body %q, want 200 and its body", o.Status, o.Body)
	}
}

// TestContract_ASCIIJSONSurvivesAnyCharset: with nowbridge.ascii_json the
// rules send every non-ASCII character as a \u escape, so an instance whose
// generateMac signs Latin-1 still gets its record webhooks verified, and
// the bridge decodes the same values as from the UTF-8 body.
func TestContract_ASCIIJSONSurvivesAnyCharset(t *testing.T) {
	vf := loadVectors(t)
	var scs []scenario
	var evs []events.SNEvent
	for _, v := range vf.Vectors {
		ev := decodeEvent(t, v.Event)
		sc := scenarioFor(ev, vf.Secret, vf.Timestamp)
		sc.Name = v.Name
		sc.Properties["nowbridge.ascii_json"] = "true"
		sc.MacCharset = "ISO-8859-1"
		scs = append(scs, sc)
		evs = append(evs, ev)
	}
	res := runNode(t, scs)
	nonASCII := 0
	for i, r := range res {
		req := onlyRequest(t, r)
		for j := 0; j < len(req.Body); j++ {
			if req.Body[j] >= 0x80 {
				t.Fatalf("%s: byte %d of the body is not ASCII: %q", r.Name, j, req.Body)
			}
		}
		if req.Body != vf.Vectors[i].Body {
			nonASCII++
		}
		got, err := deliver(t, req, time.Unix(vf.Timestamp, 0), vf.Secret)
		if err != nil {
			t.Fatalf("%s: the bridge rejects an ASCII body signed in Latin-1: %v", r.Name, err)
		}
		want := evs[i]
		if len(want.Changed) == 0 {
			want.Changed = nil
		}
		if len(got) != 1 || !reflect.DeepEqual(got[0], want) {
			t.Errorf("%s: decoded %+v, want %+v", r.Name, got, want)
		}
	}
	if nonASCII == 0 {
		t.Fatal("no vector holds a non-ASCII character: the test proves nothing")
	}
}
