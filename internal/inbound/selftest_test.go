package inbound

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

const selfTestID = events.SelfTestIDPrefix + "0123456789abcdef0123456789abcdef"

// keyOf describes a secret the way the instance's script does.
func keyOf(s webhook.Secret, prefixed bool) events.SelfTestKey {
	key, _ := base64.StdEncoding.DecodeString(s.KeyBase64())
	return events.SelfTestKey{Prefixed: prefixed, KeyBytes: len(key), Check: events.SelfTestKeyCheck(s.KeyBase64())}
}

func selfTestBody(text string, keys ...events.SelfTestKey) []byte {
	return events.EncodeSelfTestBody(&events.SelfTestEvent{SelfTest: true, Instance: "dev12345", SentBy: "nowbridge.integration", Text: text, Keys: keys})
}

// macIn signs "<id>.<ts>.<body>" encoded in charset, as a JVM whose
// generateMac does not use UTF-8 would.
func macIn(t *testing.T, s webhook.Secret, charset, id string, ts int64, body []byte) string {
	t.Helper()
	key, _ := base64.StdEncoding.DecodeString(s.KeyBase64())
	data, ok := events.EncodeCharset(id+"."+strconv.FormatInt(ts, 10)+"."+string(body), charset)
	if !ok {
		t.Fatalf("charset %s", charset)
	}
	m := hmac.New(sha256.New, key)
	m.Write(data)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// postSelfTest sends body with the given signature header (empty: none).
func (h *harness) postSelfTest(body []byte, contentType string, ts int64, signature string) response {
	h.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, h.http.URL+Path, bytes.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	req.Header.Set(webhook.HeaderID, selfTestID)
	req.Header.Set(webhook.HeaderTimestamp, strconv.FormatInt(ts, 10))
	if signature != "" {
		req.Header.Set(webhook.HeaderSignature, signature)
	}
	return h.do(req)
}

func (h *harness) metric(line string) bool {
	h.t.Helper()
	return strings.Contains(string(h.get("/metrics").body), line)
}

// TestSelfTest_VerifiedAnswered202NotStoredAndCounted: a self-test signed
// with the bridge's secret over the UTF-8 bytes, sent with a charset
// parameter, is answered 202 with result ok, stores nothing and is counted.
func TestSelfTest_VerifiedAnswered202NotStoredAndCounted(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Secrets = []webhook.Secret{secretB, secretA} })
	now := time.Now().Unix()
	body := selfTestBody(events.SelfTestText, keyOf(secretA, true))
	r := h.postSelfTest(body, "application/json; charset=utf-8", now, webhook.Sign(secretA, selfTestID, now, body))
	if r.status != http.StatusAccepted {
		t.Fatalf("self-test answered %d %s, want 202", r.status, r.body)
	}
	m := r.json(t)
	if m["selftest"] != true || m["result"] != events.SelfTestOK || m["accepted"] != 0.0 {
		t.Errorf("answer %s: want selftest true, result ok, accepted 0", r.body)
	}
	if d, _ := m["detail"].(string); !strings.Contains(d, "secret #2 of the bridge's 2") || !strings.Contains(d, "nothing was stored") {
		t.Errorf("detail %q should name which secret signs and that nothing was stored", d)
	}
	if n := len(h.stored()); n != 0 {
		t.Fatalf("SN_EVENTS holds %d messages after a self-test, want 0", n)
	}
	if !h.metric(`bridge_webhook_selftests_total{result="ok"} 1`) {
		t.Errorf("bridge_webhook_selftests_total{result=\"ok\"} is not 1")
	}
	// The same body as a record webhook would be a 422; the marker alone
	// routes it. A record webhook with a charset parameter is accepted too.
	ev := mustJSON(t, event(1, 1))
	req, _ := http.NewRequest(http.MethodPost, h.http.URL+Path, bytes.NewReader(ev))
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	webhook.SetHeaders(req.Header, secretA, "incident:"+sysID(1)+":1:update", time.Now(), ev)
	if r := h.do(req); r.status != http.StatusAccepted {
		t.Errorf("a record webhook with charset=utf-8 got %d %s, want 202", r.status, r.body)
	}
}

// TestSelfTest_RefusalsAreDiagnosed: a self-test is verified like any
// webhook; when it fails, the 401 says which setup problem the instance has.
func TestSelfTest_RefusalsAreDiagnosed(t *testing.T) {
	now := time.Now().Unix()
	h := newHarness(t, func(c *Config) { c.Now = func() time.Time { return time.Unix(now, 0) } })
	good := selfTestBody(events.SelfTestText, keyOf(secretA, true))
	encrypted := webhook.NewSecret(bytes.Repeat([]byte{0xA5}, 80)) // what an undecrypted password2 value decodes to
	cases := []struct {
		name, diagnosis, detail string
		body                    []byte
		ts                      int64
		sig                     string
	}{
		{"unsigned", events.SelfTestMissingHeaders, "missing", good, now, ""},
		{"other secret in the property", events.SelfTestSecretMismatch, "none is one of the bridge's 1",
			selfTestBody(events.SelfTestText, keyOf(secretB, true)), now, ""},
		{"property still encrypted", events.SelfTestSecretEncrypted, "encrypted form of the password2 property",
			selfTestBody(events.SelfTestText, keyOf(encrypted, false)), now, ""},
		{"generateMac signs Latin-1", events.SelfTestCharset, "encoded as ISO-8859-1", good, now,
			macIn(t, secretA, events.CharsetLatin1, selfTestID, now, good)},
		{"generateMac signs windows-1252", events.SelfTestCharset, "encoded as windows-1252", good, now,
			macIn(t, secretA, events.CharsetCP1252, selfTestID, now, good)},
		{"generateMac signs UTF-16", events.SelfTestCharset, "encoded as UTF-16", good, now,
			macIn(t, secretA, events.CharsetUTF16, selfTestID, now, good)},
		{"body sent as Latin-1, signed as UTF-8", events.SelfTestCharset, "is not UTF-8",
			func() []byte { b, _ := events.EncodeCharset(string(good), events.CharsetLatin1); return b }(), now,
			webhook.Sign(secretA, selfTestID, now, good)},
		{"body changed on the way", events.SelfTestBodyAltered, "changed the body", good, now,
			webhook.Sign(secretA, selfTestID, now, bytes.Replace(good, []byte("dev12345"), []byte("dev54321"), 1))},
		{"instance clock ahead", events.SelfTestTimestampSkew, "7m0s ahead of the bridge's", good, now + 420,
			webhook.Sign(secretA, selfTestID, now+420, good)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sig := c.sig
			if sig == "" && c.diagnosis != events.SelfTestMissingHeaders {
				// The instance signs with what its property holds.
				key := secretB
				if c.diagnosis == events.SelfTestSecretEncrypted {
					key = encrypted
				}
				sig = webhook.Sign(key, selfTestID, c.ts, c.body)
			}
			r := h.postSelfTest(c.body, "application/json; charset=utf-8", c.ts, sig)
			if r.status != http.StatusUnauthorized {
				t.Fatalf("answered %d %s, want 401", r.status, r.body)
			}
			m := r.json(t)
			if m["selftest"] != true || m["diagnosis"] != c.diagnosis {
				t.Fatalf("answer %s: want selftest true and diagnosis %q", r.body, c.diagnosis)
			}
			if d, _ := m["detail"].(string); !strings.Contains(d, c.detail) {
				t.Errorf("detail %q lacks %q", d, c.detail)
			}
			for _, s := range []string{secretA.KeyBase64(), secretB.KeyBase64(), encrypted.KeyBase64()} {
				if strings.Contains(string(r.body), s) {
					t.Errorf("the answer holds a key: %s", r.body)
				}
			}
			if !h.metric(`bridge_webhook_selftests_total{result="` + c.diagnosis + `"}`) {
				t.Errorf("no self-test counted with result %s", c.diagnosis)
			}
		})
	}
	if n := len(h.stored()); n != 0 {
		t.Fatalf("SN_EVENTS holds %d messages, want 0", n)
	}
	if !h.metric(`bridge_webhook_selftests_total{result="charset"} 4`) || !h.metric(`bridge_ingest_signature_failures_total{reason="signature"} 7`) {
		t.Errorf("metrics: want 4 charset self-tests and 7 signature failures:\n%s", h.get("/metrics").body)
	}
}

// TestSelfTest_TextAlteredBeforeSigning: an instance that encodes the body
// in Latin-1 and signs those same bytes passes verification, but the text
// is not what it should be: 202 with result text_altered.
func TestSelfTest_TextAlteredBeforeSigning(t *testing.T) {
	h := newHarness(t, nil)
	now := time.Now().Unix()
	body, _ := events.EncodeCharset(string(selfTestBody(events.SelfTestText, keyOf(secretA, true))), events.CharsetLatin1)
	r := h.postSelfTest(body, "application/json;charset=ISO-8859-1", now, webhook.Sign(secretA, selfTestID, now, body))
	if r.status != http.StatusAccepted {
		t.Fatalf("answered %d %s, want 202", r.status, r.body)
	}
	m := r.json(t)
	d, _ := m["detail"].(string)
	if m["result"] != events.SelfTestTextAltered || !strings.Contains(d, "instead of") || !strings.Contains(d, "charset=ISO-8859-1") {
		t.Errorf("answer %s: want result text_altered naming the text received and the declared charset", r.body)
	}
	if !h.metric(`bridge_webhook_selftests_total{result="text_altered"} 1`) {
		t.Error("text_altered not counted")
	}
}

// TestSelfTest_NotASelfTestBodyOrContentType: a verified self-test id with
// a body that is not a self-test is a 400; a wrong content type a 415.
func TestSelfTest_NotASelfTestBodyOrContentType(t *testing.T) {
	h := newHarness(t, nil)
	now := time.Now().Unix()
	body := mustJSON(t, event(1, 1))
	r := h.postSelfTest(body, "application/json", now, webhook.Sign(secretA, selfTestID, now, body))
	if r.status != http.StatusBadRequest || r.json(t)["diagnosis"] != events.SelfTestMalformed {
		t.Errorf("a record event under a self-test id: %d %s, want 400 malformed", r.status, r.body)
	}
	good := selfTestBody(events.SelfTestText)
	r = h.postSelfTest(good, "text/plain; charset=utf-8", now, webhook.Sign(secretA, selfTestID, now, good))
	if r.status != http.StatusUnsupportedMediaType || r.json(t)["diagnosis"] != events.SelfTestContentType {
		t.Errorf("text/plain: %d %s, want 415 content_type", r.status, r.body)
	}
	if n := len(h.stored()); n != 0 {
		t.Fatalf("SN_EVENTS holds %d messages, want 0", n)
	}
}
