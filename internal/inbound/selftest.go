package inbound

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// SelfTestAnswer is the body of the 202 a verified instance self-test gets:
// the usual counts (all zero, nothing is stored) and what the receiver
// found.
type SelfTestAnswer struct {
	Accepted   int    `json:"accepted"`
	Duplicates int    `json:"duplicates"`
	Echoes     int    `json:"echoes"`
	SelfTest   bool   `json:"selftest"`
	Result     string `json:"result"` // events.SelfTestOK or events.SelfTestTextAltered
	Detail     string `json:"detail"`
}

// maxDiagnoseBytes bounds the bodies whose failed signature is diagnosed:
// a self-test body is a few hundred bytes, and an unauthenticated sender
// must not buy a dozen MACs over a megabyte with one request.
const maxDiagnoseBytes = 16 << 10

// handleSelfTest answers an instance self-test. It is verified exactly like
// a record webhook (content type, size, signature, timestamp) and never
// stored. A refused one gets the usual status, and its answer says why in
// terms of the instance's setup (the diagnosis), which only a self-test's
// answer carries.
func (r *Receiver) handleSelfTest(c echo.Context) (err error) {
	req := c.Request()
	result := events.SelfTestMalformed
	defer func() {
		r.m.selfTests.WithLabelValues(result).Inc()
		r.log.Info("instance self-test answered", "result", result, "webhook_id", truncate(req.Header.Get(webhook.HeaderID), 120))
	}()
	refuse := func(status int, diagnosis, msg, detail string) error {
		result = diagnosis
		return c.JSON(status, ErrorBody{Error: msg, Detail: detail, SelfTest: true, Diagnosis: diagnosis})
	}
	ct := req.Header.Get(echo.HeaderContentType)
	if !isJSON(ct) {
		return refuse(http.StatusUnsupportedMediaType, events.SelfTestContentType, "unsupported content type",
			fmt.Sprintf("the self-test was sent with Content-Type %.80q; send application/json; charset=utf-8", ct))
	}
	body, err := r.readBody(req, nil)
	if err != nil {
		result = events.SelfTestTooLarge
		var he *echo.HTTPError
		if errors.As(err, &he) && he.Code != http.StatusRequestEntityTooLarge {
			result = events.SelfTestMalformed
		}
		return err
	}
	h := req.Header
	if verr := r.verifier.Verify(h.Get(webhook.HeaderID), h.Get(webhook.HeaderTimestamp), h.Get(webhook.HeaderSignature), body); verr != nil {
		status, e := r.rejectSignature(req, verr)
		e.SelfTest = true
		e.Diagnosis, e.Detail = r.diagnose(h, body, verr)
		result = e.Diagnosis
		return c.JSON(status, e)
	}
	var ev events.SelfTestEvent
	if jerr := json.Unmarshal(body, &ev); jerr != nil || !ev.SelfTest {
		why := "the body is not a self-test event ({\"selftest\":true,\"text\":...})"
		if jerr != nil {
			why += ": " + truncate(jerr.Error(), 200)
		}
		return refuse(http.StatusBadRequest, events.SelfTestMalformed, "malformed self-test", why)
	}
	ans := SelfTestAnswer{SelfTest: true, Result: events.SelfTestOK}
	if ev.Text == events.SelfTestText {
		ans.Detail = "self-test verified: signature, timestamp and the non-ASCII text " + strconv.Quote(events.SelfTestText) +
			" arrived intact" + r.signedWith(ev.Keys) + "; nothing was stored"
	} else {
		ans.Result = events.SelfTestTextAltered
		ans.Detail = fmt.Sprintf("the signature verified, but the text arrived as %.120q instead of %q%s: the instance "+
			"encoded the body in a charset other than UTF-8 before signing and sending it, so every non-ASCII character "+
			"of a record would reach the bridge altered: set the ServiceNow property nowbridge.ascii_json to true",
			ev.Text, events.SelfTestText, bodyCharsetNote(body))
	}
	if cs := declaredCharset(ct); cs != "" && !strings.EqualFold(cs, "utf-8") {
		ans.Detail += fmt.Sprintf(" (Content-Type declares charset=%.40s; JSON must be UTF-8)", cs)
	}
	result = ans.Result
	return c.JSON(http.StatusAccepted, ans)
}

// signedWith names which of the bridge's secrets the instance's keys are,
// from their key check values: during a rotation it shows whether the
// instance already signs with the new secret.
func (r *Receiver) signedWith(keys []events.SelfTestKey) string {
	checks := r.keyChecks()
	var idx []string
	for _, k := range keys {
		for i, c := range checks {
			if k.Check == c {
				idx = append(idx, "#"+strconv.Itoa(i+1))
			}
		}
	}
	if len(idx) == 0 {
		return ""
	}
	return fmt.Sprintf(" (the instance signs with secret %s of the bridge's %d)", strings.Join(idx, " and "), len(checks))
}

func (r *Receiver) keyChecks() []string {
	out := make([]string, len(r.cfg.Secrets))
	for i, s := range r.cfg.Secrets {
		out[i] = events.SelfTestKeyCheck(s.KeyBase64())
	}
	return out
}

// diagnose explains a self-test's failed verification in terms of the
// instance's setup. It learns nothing a sender without the secret could
// use: the charset test needs a MAC made with a bridge secret, and the key
// check values only say whether the instance's key is one of the bridge's.
func (r *Receiver) diagnose(h http.Header, body []byte, verr error) (string, string) {
	switch {
	case errors.Is(verr, webhook.ErrMissingHeaders):
		return events.SelfTestMissingHeaders, verr.Error() + ": something between the instance and the bridge drops headers"
	case errors.Is(verr, webhook.ErrBadTimestamp):
		return events.SelfTestBadTimestamp, verr.Error()
	case errors.Is(verr, webhook.ErrTimestampSkew):
		return events.SelfTestTimestampSkew, r.skewText(h.Get(webhook.HeaderTimestamp))
	case errors.Is(verr, webhook.ErrNoSecretsDefined):
		return events.SelfTestNoSecrets, verr.Error() + ": set BRIDGE_WEBHOOK_SECRETS"
	}
	if len(body) > maxDiagnoseBytes {
		return events.SelfTestMalformed, fmt.Sprintf("%s; a self-test body is far smaller than %d bytes, so this is not one", verr, len(body))
	}
	if cs, ok := r.matchOtherCharset(h, body); ok {
		return events.SelfTestCharset, fmt.Sprintf("the signature matches the signed text encoded as %s, not as UTF-8: "+
			"GlideCertificateEncryption.generateMac on this instance signs in %s, so every webhook whose record holds "+
			"a non-ASCII character is refused (ASCII-only ones pass): set the ServiceNow property nowbridge.ascii_json "+
			"to true (non-ASCII then travels as \\u escapes, the same bytes in every charset) and run the self-test again", cs, cs)
	}
	if !utf8.Valid(body) {
		return events.SelfTestCharset, "the body that arrived is not UTF-8" + bodyCharsetNote(body) + ": the instance sent it in " +
			"another charset than it signed: import the current update set (its requests carry Content-Type: " +
			"application/json; charset=utf-8), or set the ServiceNow property nowbridge.ascii_json to true"
	}
	var ev events.SelfTestEvent
	_ = json.Unmarshal(body, &ev) // what it claims about its keys; absent when it does not decode
	checks := r.keyChecks()
	prefixed := 0
	for _, k := range ev.Keys {
		if k.Prefixed {
			prefixed++
		}
		for _, c := range checks {
			if k.Check != "" && k.Check == c {
				return events.SelfTestBodyAltered, "the instance signs with one of the bridge's secrets (its key check " +
					"matches), yet the signature matches neither the bytes that arrived nor their re-encoding in another " +
					"charset: something between the instance and the bridge (a proxy?) changed the body or the webhook-id " +
					"or webhook-timestamp header on the way"
			}
		}
	}
	switch {
	case len(ev.Keys) > 0 && prefixed == 0:
		return events.SelfTestSecretEncrypted, fmt.Sprintf("gs.getProperty('nowbridge.webhook_secret') gives the script "+
			"%d value(s) without the whsec_ prefix (the first decodes to %d bytes), and none is one of the bridge's "+
			"secrets: the script is reading the encrypted form of the password2 property, not its clear text (or a "+
			"different key entered without its prefix). Re-enter the whsec_ secret in the property; if the self-test "+
			"still reports this, see \"The self-test\" in docs/servicenow-setup.md",
			len(ev.Keys), ev.Keys[0].KeyBytes)
	case len(ev.Keys) > 0:
		return events.SelfTestSecretMismatch, fmt.Sprintf("the instance's nowbridge.webhook_secret holds %d secret(s) and "+
			"none is one of the bridge's %d BRIDGE_WEBHOOK_SECRETS (their key checks differ): put one of the bridge's "+
			"secrets in the property (during a rotation, list both, comma-separated)", len(ev.Keys), len(checks))
	}
	return events.SelfTestSecretMismatch, "no webhook-signature entry matches any of the bridge's secrets, and the body " +
		"does not describe the instance's keys: the instance's nowbridge.webhook_secret is not one of BRIDGE_WEBHOOK_SECRETS"
}

// matchOtherCharset reports the charset in which the signed text
// "<id>.<timestamp>.<body>" gives one of the signatures.
func (r *Receiver) matchOtherCharset(h http.Header, body []byte) (string, bool) {
	var sigs [][]byte
	for _, entry := range strings.Fields(h.Get(webhook.HeaderSignature)) {
		if v, sig, ok := strings.Cut(entry, ","); ok && v == "v1" {
			if b, err := base64.StdEncoding.DecodeString(sig); err == nil {
				sigs = append(sigs, b)
			}
		}
	}
	if len(sigs) == 0 {
		return "", false
	}
	text := h.Get(webhook.HeaderID) + "." + h.Get(webhook.HeaderTimestamp) + "." + string(body)
	for _, cs := range events.OtherCharsets {
		data, _ := events.EncodeCharset(text, cs)
		for _, s := range r.cfg.Secrets {
			key, err := base64.StdEncoding.DecodeString(s.KeyBase64())
			if err != nil {
				continue
			}
			m := hmac.New(sha256.New, key)
			m.Write(data)
			sum := m.Sum(nil)
			for _, sig := range sigs {
				if hmac.Equal(sig, sum) {
					return cs, true
				}
			}
		}
	}
	return "", false
}

func (r *Receiver) skewText(ts string) string {
	n, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return webhook.ErrTimestampSkew.Error()
	}
	now := time.Now
	if r.cfg.Now != nil {
		now = r.cfg.Now
	}
	skew := time.Unix(n, 0).Sub(now().Truncate(time.Second))
	dir := "ahead of"
	if skew < 0 {
		skew, dir = -skew, "behind"
	}
	return fmt.Sprintf("webhook-timestamp says the instance's clock is %s %s the bridge's; the bridge accepts %s "+
		"(BRIDGE_WEBHOOK_TOLERANCE): synchronise the bridge host's clock (NTP)", skew, dir, r.cfg.Tolerance)
}

// bodyCharsetNote says where a body stops being UTF-8, for people.
func bodyCharsetNote(body []byte) string {
	if utf8.Valid(body) {
		return ""
	}
	i := 0
	for i < len(body) {
		r, n := utf8.DecodeRune(body[i:])
		if r == utf8.RuneError && n <= 1 {
			break
		}
		i += n
	}
	end := min(i+4, len(body))
	return fmt.Sprintf(" (from byte %d: % x…)", i, body[i:end])
}

func declaredCharset(contentType string) string {
	_, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		return ""
	}
	return params["charset"]
}
