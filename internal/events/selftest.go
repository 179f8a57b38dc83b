package events

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"unicode/utf16"
)

// The instance's self-test (servicenow/business_rules/NowbridgeWebhook.js,
// selfTest) signs and sends a test event exactly as the business rules send
// a record change, through the same Script Include and the same property.
// The receiver recognises it by its webhook-id, verifies it like any other
// webhook and answers without storing anything.
//
// The marker is the webhook-id prefix SelfTestIDPrefix. A record event's id
// is "<table>:<sys_id>:<sys_mod_count>:<action>" and a table name never
// holds a '-', so no record event can carry it; the id is part of the
// signed bytes, so nobody without the secret can turn an event into a
// self-test or back. The body also says "selftest": true, for people.
const SelfTestIDPrefix = "nowbridge-selftest:"

// IsSelfTestID reports whether a webhook-id marks an instance self-test.
func IsSelfTestID(id string) bool { return strings.HasPrefix(id, SelfTestIDPrefix) }

// SelfTestText is the test event's text: Latin-1 (é), Windows-1252 only
// (— U+2014) and CJK (東京) characters, so every charset that is not UTF-8
// changes the signed bytes.
const SelfTestText = "Café — 東京"

// SelfTestKeyCheckData is what a key check value signs (ASCII, so every
// charset gives the same bytes).
const SelfTestKeyCheckData = "nowbridge-key-check"

// SelfTestEvent is the self-test's body. JSON.stringify of an object built
// in this order; Keys describes each key the property yields, which lets the
// receiver tell a wrong secret from an encrypted one without the secret
// ever leaving the instance.
type SelfTestEvent struct {
	SelfTest bool          `json:"selftest"`
	Instance string        `json:"instance,omitempty"`
	SentBy   string        `json:"sent_by,omitempty"`
	Text     string        `json:"text"`
	Keys     []SelfTestKey `json:"keys"`
}

// SelfTestKey describes one signing key of the property nowbridge.webhook_secret.
type SelfTestKey struct {
	// Prefixed: the entry started with whsec_. The encrypted form of a
	// password2 property never does.
	Prefixed bool `json:"whsec_prefix"`
	// KeyBytes is the length of the base64-decoded key.
	KeyBytes int `json:"key_bytes"`
	// Check is a key check value (SelfTestKeyCheck): it tells whether two
	// parties hold the same key and reveals nothing else of it.
	Check string `json:"check"`
}

// SelfTestKeyCheck is the key check value of a base64 key: the first 8
// base64 characters of HMAC-SHA256(key, SelfTestKeyCheckData), what the
// script computes with GlideCertificateEncryption.generateMac. 48 bits of
// a MAC over a constant identify a key without helping to forge anything.
func SelfTestKeyCheck(keyBase64 string) string {
	key, err := base64.StdEncoding.DecodeString(keyBase64)
	if err != nil {
		return ""
	}
	h := hmac.New(sha256.New, key)
	h.Write([]byte(SelfTestKeyCheckData))
	return base64.StdEncoding.EncodeToString(h.Sum(nil))[:8]
}

// EncodeSelfTestBody renders a self-test event byte for byte as the script
// does (JSON.stringify; see EncodeWebhookBody for the escaping rules).
func EncodeSelfTestBody(e *SelfTestEvent) []byte {
	b := make([]byte, 0, 160+64*len(e.Keys))
	b = append(b, `{"selftest":`...)
	b = appendBool(b, e.SelfTest)
	if e.Instance != "" {
		b = append(b, `,"instance":`...)
		b = appendJSString(b, e.Instance)
	}
	if e.SentBy != "" {
		b = append(b, `,"sent_by":`...)
		b = appendJSString(b, e.SentBy)
	}
	b = append(b, `,"text":`...)
	b = appendJSString(b, e.Text)
	b = append(b, `,"keys":[`...)
	for i, k := range e.Keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"whsec_prefix":`...)
		b = appendBool(b, k.Prefixed)
		b = append(b, `,"key_bytes":`...)
		b = appendInt(b, k.KeyBytes)
		b = append(b, `,"check":`...)
		b = appendJSString(b, k.Check)
		b = append(b, '}')
	}
	return append(b, ']', '}')
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, "true"...)
	}
	return append(b, "false"...)
}

func appendInt(b []byte, n int) []byte {
	if n < 0 {
		b = append(b, '-')
		n = -n
	}
	var d [20]byte
	i := len(d)
	for {
		i--
		d[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	return append(b, d[i:]...)
}

// Results of a self-test as the receiver reports them: the "diagnosis" of
// its answer and the label of bridge_webhook_selftests_total.
const (
	SelfTestOK          = "ok"           // verified; the text arrived intact
	SelfTestTextAltered = "text_altered" // verified, but the text is not SelfTestText: the body was mis-encoded before signing
	// 401s, most specific first.
	SelfTestCharset         = "charset"          // the signature matches the body re-encoded in another charset
	SelfTestSecretEncrypted = "secret_encrypted" // the property yields a value that is not a whsec_ secret (the encrypted password2)
	SelfTestSecretMismatch  = "secret_mismatch"  // the property holds a secret the bridge does not have
	SelfTestBodyAltered     = "body_altered"     // the right secret, but the bytes that arrived are not the bytes signed
	SelfTestTimestampSkew   = "timestamp_skew"
	SelfTestBadTimestamp    = "bad_timestamp"
	SelfTestMissingHeaders  = "missing_headers"
	SelfTestNoSecrets       = "no_secrets"
	// Refused before the signature was checked, or not a self-test body.
	SelfTestContentType = "content_type"
	SelfTestTooLarge    = "too_large"
	SelfTestMalformed   = "malformed"
)

// SelfTestResults lists every result, for metrics that export zeros.
var SelfTestResults = []string{SelfTestOK, SelfTestTextAltered, SelfTestCharset, SelfTestSecretEncrypted,
	SelfTestSecretMismatch, SelfTestBodyAltered, SelfTestTimestampSkew, SelfTestBadTimestamp, SelfTestMissingHeaders,
	SelfTestNoSecrets, SelfTestContentType, SelfTestTooLarge, SelfTestMalformed}

// Charsets a JVM may sign or send text in instead of UTF-8, as Java names
// them. "UTF-16" is Java's String.getBytes("UTF-16"): big-endian with a
// byte-order mark.
const (
	CharsetUTF8    = "UTF-8"
	CharsetLatin1  = "ISO-8859-1"
	CharsetCP1252  = "windows-1252"
	CharsetUTF16   = "UTF-16"
	CharsetUTF16LE = "UTF-16LE"
	CharsetUTF16BE = "UTF-16BE"
)

// OtherCharsets are the charsets the receiver tries when a self-test's
// signature fails, in this order.
var OtherCharsets = []string{CharsetLatin1, CharsetCP1252, CharsetUTF16, CharsetUTF16LE, CharsetUTF16BE}

// EncodeCharset encodes s in a charset the way Java's String.getBytes does:
// a character the charset cannot represent becomes '?'. Invalid UTF-8 in s
// counts as U+FFFD. ok is false for an unknown charset.
func EncodeCharset(s, charset string) (b []byte, ok bool) {
	switch charset {
	case CharsetUTF8:
		return []byte(strings.ToValidUTF8(s, "\uFFFD")), true
	case CharsetLatin1, CharsetCP1252:
		b = make([]byte, 0, len(s))
		for _, r := range s {
			switch {
			case r < 0x80:
				b = append(b, byte(r))
			case charset == CharsetLatin1 && r <= 0xFF:
				b = append(b, byte(r))
			case charset == CharsetCP1252 && r >= 0xA0 && r <= 0xFF:
				b = append(b, byte(r))
			case charset == CharsetCP1252 && cp1252[r] != 0:
				b = append(b, cp1252[r])
			default:
				b = append(b, '?')
			}
		}
		return b, true
	case CharsetUTF16, CharsetUTF16LE, CharsetUTF16BE:
		units := utf16.Encode([]rune(s))
		b = make([]byte, 0, 2*len(units)+2)
		if charset == CharsetUTF16 {
			b = append(b, 0xFE, 0xFF)
		}
		for _, u := range units {
			if charset == CharsetUTF16LE {
				b = append(b, byte(u), byte(u>>8))
			} else {
				b = append(b, byte(u>>8), byte(u))
			}
		}
		return b, true
	}
	return nil, false
}

// cp1252 maps the characters Windows-1252 places in 0x80–0x9F.
var cp1252 = map[rune]byte{
	'€': 0x80, '‚': 0x82, 'ƒ': 0x83, '„': 0x84, '…': 0x85, '†': 0x86, '‡': 0x87, 'ˆ': 0x88, '‰': 0x89,
	'Š': 0x8A, '‹': 0x8B, 'Œ': 0x8C, 'Ž': 0x8E, '‘': 0x91, '’': 0x92, '“': 0x93, '”': 0x94, '•': 0x95,
	'–': 0x96, '—': 0x97, '˜': 0x98, '™': 0x99, 'š': 0x9A, '›': 0x9B, 'œ': 0x9C, 'ž': 0x9E, 'Ÿ': 0x9F,
}

// The instance's self-test resource, installed by the update set as a
// Scripted REST API: POST /api/<namespace>/nowbridge/selftest. The update
// set ships SelfTestNamespace; an instance may show its own namespace (the
// company code in global scope), which is why callers discover the path.
const (
	SelfTestNamespace = "nowbridge"
	SelfTestAPIID     = "nowbridge"
	SelfTestResource  = "/selftest"
	// SelfTestRole is the role the resource's ACL requires.
	SelfTestRole = "nowbridge_integration"
)

// SelfTestBasePath is a namespace's base API path, /api/<namespace>/nowbridge.
func SelfTestBasePath(namespace string) string { return "/api/" + namespace + "/" + SelfTestAPIID }

// SelfTestPath is the resource's path under a namespace.
func SelfTestPath(namespace string) string { return SelfTestBasePath(namespace) + SelfTestResource }

// SelfTestOutcome is what the resource answers ({"result": SelfTestOutcome}):
// NowbridgeWebhook.selfTest()'s return value.
type SelfTestOutcome struct {
	OK          bool   `json:"ok"`
	Stage       string `json:"stage"` // config (nothing sent), send (no HTTP answer), bridge (the bridge answered)
	WebhookURL  string `json:"webhook_url"`
	WebhookID   string `json:"webhook_id"`
	ContentType string `json:"content_type"`
	Keys        int    `json:"keys"`
	Status      int    `json:"status"`
	Result      string `json:"result"` // the bridge's result or diagnosis
	Detail      string `json:"detail"`
	Body        string `json:"body"`
	Error       string `json:"error"`
	ElapsedMS   int64  `json:"elapsed_ms"`
}

// Stages of a SelfTestOutcome.
const (
	SelfTestStageConfig = "config"
	SelfTestStageSend   = "send"
	SelfTestStageBridge = "bridge"
)
