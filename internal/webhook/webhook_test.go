package webhook

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The Standard Webhooks specification's published example.
const (
	specSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	specID        = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	specTimestamp = 1614265330
	specPayload   = `{"test": 2432232314}`
	specSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func TestSign_StandardWebhooksExample(t *testing.T) {
	s, err := ParseSecret(specSecret)
	if err != nil {
		t.Fatal(err)
	}
	if got := Sign(s, specID, specTimestamp, []byte(specPayload)); got != specSignature {
		t.Fatalf("Sign = %s, want the specification's %s", got, specSignature)
	}
	v := &Verifier{Secrets: []Secret{s}, Now: func() time.Time { return time.Unix(specTimestamp+60, 0) }}
	if err := v.Verify(specID, strconv.Itoa(specTimestamp), specSignature, []byte(specPayload)); err != nil {
		t.Fatalf("Verify of the specification's example: %v", err)
	}
}

func TestVerify(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	a := NewSecret([]byte("0123456789abcdef0123456789abcdef"))
	b := NewSecret([]byte("fedcba9876543210fedcba9876543210"))
	body := []byte(`{"table":"incident"}`)
	id := "incident:9d385017c611228701d22104cc95c371:4:update"
	ts := now.Unix()
	tsStr := strconv.FormatInt(ts, 10)
	sigA, sigB := Sign(a, id, ts, body), Sign(b, id, ts, body)
	only := func(s ...Secret) []Secret { return s }

	cases := []struct {
		name    string
		secrets []Secret
		id, ts  string
		sig     string
		body    []byte
		tol     time.Duration
		want    error
	}{
		{"valid", only(a), id, tsStr, sigA, body, 0, nil},
		{"second secret verifies (rotation)", only(a, b), id, tsStr, sigB, body, 0, nil},
		{"several entries, one matches", only(b), id, tsStr, sigA + " " + sigB, body, 0, nil},
		{"unknown versions skipped", only(a), id, tsStr, "v2,abc v1a,xyz " + sigA, body, 0, nil},
		{"wrong secret", only(b), id, tsStr, sigA, body, 0, ErrNoMatchingSig},
		{"body changed", only(a), id, tsStr, sigA, []byte(`{"table":"problem"}`), 0, ErrNoMatchingSig},
		{"id changed", only(a), "other", tsStr, sigA, body, 0, ErrNoMatchingSig},
		{"timestamp changed within tolerance", only(a), id, strconv.FormatInt(ts+1, 10), sigA, body, 0, ErrNoMatchingSig},
		{"timestamp with leading zero is other bytes", only(a), id, "0" + tsStr, sigA, body, 0, ErrNoMatchingSig},
		{"signature not base64", only(a), id, tsStr, "v1,!!!", body, 0, ErrNoMatchingSig},
		{"signature without version", only(a), id, tsStr, strings.TrimPrefix(sigA, "v1,"), body, 0, ErrNoMatchingSig},
		{"truncated signature", only(a), id, tsStr, sigA[:20], body, 0, ErrNoMatchingSig},
		{"missing id", only(a), "", tsStr, sigA, body, 0, ErrMissingHeaders},
		{"missing timestamp", only(a), id, "", sigA, body, 0, ErrMissingHeaders},
		{"missing signature", only(a), id, tsStr, "", body, 0, ErrMissingHeaders},
		{"timestamp not a number", only(a), id, "2026-11-28", sigA, body, 0, ErrBadTimestamp},
		{"timestamp in milliseconds", only(a), id, strconv.FormatInt(ts*1000, 10), sigA, body, 0, ErrTimestampSkew},
		{"timestamp 5m1s old", only(a), id, strconv.FormatInt(ts-301, 10), sigA, body, 0, ErrTimestampSkew},
		{"timestamp 5m1s ahead", only(a), id, strconv.FormatInt(ts+301, 10), sigA, body, 0, ErrTimestampSkew},
		{"timestamp exactly 5m old", only(a), id, strconv.FormatInt(ts-300, 10), Sign(a, id, ts-300, body), body, 0, nil},
		{"custom tolerance", only(a), id, strconv.FormatInt(ts-60, 10), Sign(a, id, ts-60, body), body, 30 * time.Second, ErrTimestampSkew},
		{"no secrets", nil, id, tsStr, sigA, body, 0, ErrNoSecretsDefined},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := &Verifier{Secrets: c.secrets, Tolerance: c.tol, Now: func() time.Time { return now }}
			err := v.Verify(c.id, c.ts, c.sig, c.body)
			if !errors.Is(err, c.want) {
				t.Fatalf("Verify = %v, want %v", err, c.want)
			}
		})
	}
}

func TestParseSecret(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	enc := NewSecret(key).Encoded()
	for _, in := range []string{enc, strings.TrimPrefix(enc, "whsec_"), "  " + enc + "\n", strings.TrimRight(enc, "=")} {
		s, err := ParseSecret(in)
		if err != nil || !bytes.Equal(s.key, key) {
			t.Errorf("ParseSecret(%q) = %v", in, err)
		}
	}
	for _, in := range []string{"", "whsec_", "whsec_not base64!", "whsec_" + "c2hvcnQ=" /* "short" */} {
		if _, err := ParseSecret(in); !errors.Is(err, ErrMalformedSecret) {
			t.Errorf("ParseSecret(%q) = %v, want ErrMalformedSecret", in, err)
		}
	}
}

func TestParseSecrets_ListFirstSigns(t *testing.T) {
	a, b := NewSecret([]byte("0123456789abcdef0123456789abcdef")), NewSecret([]byte("fedcba9876543210fedcba9876543210"))
	got, err := ParseSecrets(a.Encoded() + ", ," + b.Encoded() + ",")
	if err != nil || len(got) != 2 || !bytes.Equal(got[0].key, a.key) || !bytes.Equal(got[1].key, b.key) {
		t.Fatalf("ParseSecrets = %d secrets, %v", len(got), err)
	}
	if got, err := ParseSecrets(""); err != nil || len(got) != 0 {
		t.Errorf("empty list = %v %v", got, err)
	}
	_, err = ParseSecrets(a.Encoded() + ",whsec_hunter2hunter2")
	if err == nil || !strings.Contains(err.Error(), "secret #2") || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("bad second secret: %v, want an error naming #2 without the value", err)
	}
}

func TestSecret_NeverPrints(t *testing.T) {
	s := NewSecret([]byte("0123456789abcdef0123456789abcdef"))
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("x", "secret", s)
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s", s, s, s, s), logs.String(), fmt.Sprint(struct{ S Secret }{s})} {
		if strings.Contains(out, s.KeyBase64()) || strings.Contains(out, "0123456789abcdef") || !strings.Contains(out, "[redacted]") {
			t.Errorf("secret printed as %q", out)
		}
	}
}

func TestSetHeaders_RoundTrip(t *testing.T) {
	s := NewSecret([]byte("0123456789abcdef0123456789abcdef"))
	h := http.Header{}
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`[]`)
	SetHeaders(h, s, "id-1", now, body)
	if h.Get(HeaderTimestamp) != "1800000000" || !strings.HasPrefix(h.Get(HeaderSignature), "v1,") {
		t.Fatalf("headers %v", h)
	}
	v := &Verifier{Secrets: []Secret{s}, Now: func() time.Time { return now }}
	if err := v.Verify(h.Get(HeaderID), h.Get(HeaderTimestamp), h.Get(HeaderSignature), body); err != nil {
		t.Fatal(err)
	}
}

// Headers reads what h.Get reads, whatever case the sender wrote.
func TestHeaders_AsGetReadsThem(t *testing.T) {
	for _, h := range []http.Header{
		{},
		{"Webhook-Id": {"a", "b"}, "Webhook-Timestamp": {"1"}, "Webhook-Signature": {"v1,x"}},
		{"Webhook-Id": {""}},
	} {
		id, ts, sig := Headers(h)
		if id != h.Get(HeaderID) || ts != h.Get(HeaderTimestamp) || sig != h.Get(HeaderSignature) || ID(h) != h.Get(HeaderID) {
			t.Errorf("Headers(%v) = %q %q %q, h.Get reads %q %q %q", h, id, ts, sig, h.Get(HeaderID), h.Get(HeaderTimestamp), h.Get(HeaderSignature))
		}
	}
	req, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1/", nil)
	req.Header.Set("WEBHOOK-ID", "msg_1") // net/http canonicalises what it parses and what Set is given
	if ID(req.Header) != "msg_1" {
		t.Errorf("ID = %q, want msg_1", ID(req.Header))
	}
}
