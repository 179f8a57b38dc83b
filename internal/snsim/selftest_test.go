package snsim

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

var (
	selfTestKeyA = webhook.NewSecret(bytes.Repeat([]byte{0x11}, 32))
	selfTestKeyB = webhook.NewSecret(bytes.Repeat([]byte{0x22}, 32))
)

// bridgeStub captures what the instance posts and answers like a receiver
// that verifies with its secrets (nothing more: the real receiver's
// diagnosis is tested in internal/inbound and by the doctor).
type bridgeStub struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []selfTestCapture
}

type selfTestCapture struct {
	header http.Header
	body   []byte
}

func newBridgeStub(t *testing.T, secrets ...webhook.Secret) *bridgeStub {
	t.Helper()
	b := &bridgeStub{}
	v := &webhook.Verifier{Secrets: secrets, Tolerance: 24 * 365 * time.Hour}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.got = append(b.got, selfTestCapture{r.Header.Clone(), body})
		b.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if err := v.Verify(r.Header.Get(webhook.HeaderID), r.Header.Get(webhook.HeaderTimestamp), r.Header.Get(webhook.HeaderSignature), body); err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":"invalid signature","selftest":true,"diagnosis":"secret_mismatch","detail":"stub"}`))
			return
		}
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write([]byte(`{"accepted":0,"duplicates":0,"echoes":0,"selftest":true,"result":"ok","detail":"stub verified"}`))
	}))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *bridgeStub) requests() []selfTestCapture {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]selfTestCapture(nil), b.got...)
}

func (h *harness) selfTest(path string) (response, events.SelfTestOutcome) {
	h.t.Helper()
	r := h.do(http.MethodPost, path, "{}")
	var env struct {
		Result events.SelfTestOutcome `json:"result"`
	}
	if r.status == http.StatusOK {
		dec := json.NewDecoder(bytes.NewReader(r.body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&env); err != nil {
			h.t.Fatalf("self-test answer %s: %v", r.body, err)
		}
	}
	return r, env.Result
}

func macOver(key webhook.Secret, charset string, data string) string {
	raw, _ := base64.StdEncoding.DecodeString(key.KeyBase64())
	b, _ := events.EncodeCharset(data, charset)
	m := hmac.New(sha256.New, raw)
	m.Write(b)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// TestSelfTest_SignsAndPostsLikeTheScript: the resource posts the test
// event Go's EncodeSelfTestBody renders, with the UTF-8 content type, a
// self-test webhook-id, one signature per secret of the property over the
// UTF-8 bytes, at the instance's clock; it answers 200 with the outcome.
func TestSelfTest_SignsAndPostsLikeTheScript(t *testing.T) {
	br := newBridgeStub(t, selfTestKeyA)
	h := newHarness(t, Config{InstanceName: "dev12345", Now: func() time.Time { return fixedNow },
		Webhooks: []WebhookTarget{{URL: br.srv.URL + "/webhooks/servicenow", Secrets: []webhook.Secret{selfTestKeyA, selfTestKeyB}}}})
	r, o := h.selfTest(events.SelfTestPath(events.SelfTestNamespace))
	if r.status != http.StatusOK || !o.OK || o.Stage != events.SelfTestStageBridge || o.Status != http.StatusAccepted || o.Result != events.SelfTestOK {
		t.Fatalf("self-test: %d %+v, want 200 and an ok outcome from the bridge", r.status, o)
	}
	if o.Keys != 2 || o.WebhookURL != br.srv.URL+"/webhooks/servicenow" || o.Detail != "stub verified" {
		t.Errorf("outcome %+v: want 2 keys, the target URL and the bridge's detail", o)
	}
	got := br.requests()
	if len(got) != 1 {
		t.Fatalf("the bridge got %d requests, want 1", len(got))
	}
	req := got[0]
	if ct := req.header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Errorf("Content-Type %q, want application/json; charset=utf-8", ct)
	}
	id := req.header.Get(webhook.HeaderID)
	if !events.IsSelfTestID(id) || id != o.WebhookID || len(id) != len(events.SelfTestIDPrefix)+32 {
		t.Errorf("webhook-id %q (outcome %q): want the self-test prefix and 32 hex characters", id, o.WebhookID)
	}
	if ts := req.header.Get(webhook.HeaderTimestamp); ts != strconv.FormatInt(fixedNow.Unix(), 10) {
		t.Errorf("webhook-timestamp %s, want the instance clock %d", ts, fixedNow.Unix())
	}
	want := events.EncodeSelfTestBody(&events.SelfTestEvent{SelfTest: true, Instance: "dev12345", SentBy: DefaultAppUser, Text: events.SelfTestText,
		Keys: []events.SelfTestKey{
			{Prefixed: true, KeyBytes: 32, Check: events.SelfTestKeyCheck(selfTestKeyA.KeyBase64())},
			{Prefixed: true, KeyBytes: 32, Check: events.SelfTestKeyCheck(selfTestKeyB.KeyBase64())},
		}})
	if !bytes.Equal(req.body, want) {
		t.Errorf("body\n got %s\nwant %s", req.body, want)
	}
	sigs := webhook.Sign(selfTestKeyA, id, fixedNow.Unix(), req.body) + " " + webhook.Sign(selfTestKeyB, id, fixedNow.Unix(), req.body)
	if got := req.header.Get(webhook.HeaderSignature); got != sigs {
		t.Errorf("webhook-signature %q, want one entry per secret over the UTF-8 bytes %q", got, sigs)
	}
	if n := h.sim.SelfTestCalls(); n != 1 {
		t.Errorf("SelfTestCalls %d, want 1", n)
	}
}

// TestSelfTest_FailureKnobs: each knob produces on the wire what that
// failure on a real instance would.
func TestSelfTest_FailureKnobs(t *testing.T) {
	br := newBridgeStub(t, selfTestKeyA)
	h := newHarness(t, Config{Now: func() time.Time { return fixedNow },
		Webhooks: []WebhookTarget{{URL: br.srv.URL, Secrets: []webhook.Secret{selfTestKeyA}}}})
	path := events.SelfTestPath(events.SelfTestNamespace)
	decode := func(b []byte) events.SelfTestEvent {
		var ev events.SelfTestEvent
		if err := json.Unmarshal(b, &ev); err != nil {
			t.Fatalf("body %s: %v", b, err)
		}
		return ev
	}

	t.Run("property holds another secret", func(t *testing.T) {
		mustSelfTest(t, h.sim.SetSelfTest(SelfTestOptions{Secret: SelfTestSecretOther}))
		_, o := h.selfTest(path)
		req := br.requests()[len(br.requests())-1]
		k := decode(req.body).Keys
		if o.OK || o.Status != http.StatusUnauthorized || len(k) != 1 || !k[0].Prefixed || k[0].Check == events.SelfTestKeyCheck(selfTestKeyA.KeyBase64()) {
			t.Errorf("outcome %+v, keys %+v: want a 401 and a whsec_ key that is not the bridge's", o, k)
		}
	})
	t.Run("property still encrypted", func(t *testing.T) {
		mustSelfTest(t, h.sim.SetSelfTest(SelfTestOptions{Secret: SelfTestSecretEncrypted}))
		_, o := h.selfTest(path)
		req := br.requests()[len(br.requests())-1]
		k := decode(req.body).Keys
		if o.OK || o.Status != http.StatusUnauthorized || len(k) != 1 || k[0].Prefixed || k[0].KeyBytes == 32 {
			t.Errorf("outcome %+v, keys %+v: want a 401 and an unprefixed key of another length", o, k)
		}
	})
	for _, cs := range events.OtherCharsets {
		t.Run("generateMac signs "+cs, func(t *testing.T) {
			mustSelfTest(t, h.sim.SetSelfTest(SelfTestOptions{MacCharset: cs}))
			_, o := h.selfTest(path)
			req := br.requests()[len(br.requests())-1]
			data := req.header.Get(webhook.HeaderID) + "." + req.header.Get(webhook.HeaderTimestamp) + "." + string(req.body)
			if o.OK || o.Status != http.StatusUnauthorized || req.header.Get(webhook.HeaderSignature) != macOver(selfTestKeyA, cs, data) {
				t.Errorf("outcome %+v: want a 401 and a signature over the %s bytes", o, cs)
			}
			if !bytes.Contains(req.body, []byte(events.SelfTestText)) {
				t.Errorf("the body is no longer UTF-8: %q", req.body)
			}
		})
	}
	t.Run("bridge unreachable", func(t *testing.T) {
		mustSelfTest(t, h.sim.SetSelfTest(SelfTestOptions{Unreachable: true}))
		before := len(br.requests())
		_, o := h.selfTest(path)
		if o.OK || o.Stage != events.SelfTestStageSend || o.Status != 0 || !strings.Contains(o.Error, "Connection refused") || len(br.requests()) != before {
			t.Errorf("outcome %+v: want stage send, no status, the connection error and nothing sent", o)
		}
	})
	t.Run("bridge really down", func(t *testing.T) {
		dead := httptest.NewServer(http.NotFoundHandler())
		dead.Close()
		mustSelfTest(t, h.sim.SetSelfTest(SelfTestOptions{WebhookURL: dead.URL + "/webhooks/servicenow"}))
		_, o := h.selfTest(path)
		if o.OK || o.Stage != events.SelfTestStageSend || !strings.Contains(o.Error, "refused") {
			t.Errorf("outcome %+v: want stage send with the dial error", o)
		}
	})
	t.Run("property empty", func(t *testing.T) {
		mustSelfTest(t, h.sim.SetSelfTest(SelfTestOptions{Secret: SelfTestSecretEmpty}))
		_, o := h.selfTest(path)
		if o.OK || o.Stage != events.SelfTestStageConfig || !strings.Contains(o.Error, "webhook_secret is empty") {
			t.Errorf("outcome %+v: want stage config naming the property", o)
		}
	})
	if err := h.sim.SetSelfTest(SelfTestOptions{MacCharset: "EBCDIC"}); err == nil {
		t.Error("an unknown charset was accepted")
	}
}

// TestSelfTest_WhoMayCallItAndWhere: authentication, the role, the
// namespace, an instance without the update set, and the API's record.
func TestSelfTest_WhoMayCallItAndWhere(t *testing.T) {
	br := newBridgeStub(t, selfTestKeyA)
	h := newHarness(t, Config{Webhooks: []WebhookTarget{{URL: br.srv.URL, Secrets: []webhook.Secret{selfTestKeyA}}}})
	path := events.SelfTestPath(events.SelfTestNamespace)

	req, _ := http.NewRequest(http.MethodPost, h.srv.URL+path, strings.NewReader("{}"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("without a token: %d, want 401", resp.StatusCode)
	}
	if r := h.do(http.MethodGet, path, ""); r.status != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d, want 405", r.status)
	}
	mustSelfTest(t, h.sim.SetSelfTest(SelfTestOptions{NoRole: true}))
	if r, _ := h.selfTest(path); r.status != http.StatusForbidden {
		t.Errorf("without %s: %d %s, want 403", events.SelfTestRole, r.status, r.body)
	}
	mustSelfTest(t, h.sim.SetSelfTest(SelfTestOptions{Namespace: "x_1234567"}))
	if r, _ := h.selfTest(path); r.status != http.StatusBadRequest || !strings.Contains(string(r.body), "Requested URI does not represent any resource") {
		t.Errorf("the shipped path on an instance with another namespace: %d %s, want 400", r.status, r.body)
	}
	if r, o := h.selfTest(events.SelfTestPath("x_1234567")); r.status != http.StatusOK || !o.OK {
		t.Errorf("the instance's own path: %d %+v, want 200 ok", r.status, o)
	}
	defs := func() (response, []map[string]any) {
		r := h.get("/api/now/table/sys_ws_definition", url.Values{"sysparm_query": {"service_id=nowbridge^active=true"}})
		return r, r.results(t)
	}
	if r, rows := defs(); r.status != http.StatusOK || len(rows) != 0 || r.header.Get("X-Total-Count") != "1" {
		t.Errorf("sys_ws_definition for the integration user: %d, %d rows, X-Total-Count %q; want 200, none, 1 (hidden by ACL)", r.status, len(rows), r.header.Get("X-Total-Count"))
	}
	mustSelfTest(t, h.sim.SetSelfTest(SelfTestOptions{Namespace: "x_1234567", DefinitionReadable: true}))
	if _, rows := defs(); len(rows) != 1 || rows[0]["base_uri"] != "/api/x_1234567/nowbridge" {
		t.Errorf("sys_ws_definition readable: %v, want the API's row with its base_uri", rows)
	}
	mustSelfTest(t, h.sim.SetSelfTest(SelfTestOptions{Missing: true, DefinitionReadable: true}))
	if r, _ := h.selfTest(path); r.status != http.StatusBadRequest {
		t.Errorf("without the update set: %d, want 400", r.status)
	}
	if r, rows := defs(); len(rows) != 0 || r.header.Get("X-Total-Count") != "0" {
		t.Errorf("without the update set sys_ws_definition has %d rows (count %q), want none", len(rows), r.header.Get("X-Total-Count"))
	}
}

func mustSelfTest(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
