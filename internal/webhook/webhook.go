// Package webhook implements the Standard Webhooks signing scheme used on both
// sides of the bridge: ServiceNow business rules sign what they send to us, and
// the HTTP applier signs what we send to the SaaS app.
package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nowbridge/nowbridge/internal/secret"
)

// Header names of the Standard Webhooks scheme.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// The header names as net/http stores them: reading a header under its
// canonical key skips canonicalising (and allocating) the name per request.
var (
	keyID        = http.CanonicalHeaderKey(HeaderID)
	keyTimestamp = http.CanonicalHeaderKey(HeaderTimestamp)
	keySignature = http.CanonicalHeaderKey(HeaderSignature)
)

// Headers returns the id, timestamp and signature headers of h (each its
// first value, "" if absent), as h.Get would.
func Headers(h http.Header) (id, timestamp, signature string) {
	return first(h[keyID]), first(h[keyTimestamp]), first(h[keySignature])
}

// ID returns h's webhook-id header, as h.Get(HeaderID) would.
func ID(h http.Header) string { return first(h[keyID]) }

func first(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}

const secretPrefix = "whsec_"

// Errors returned by Verify. They never contain key material.
var (
	ErrMissingHeaders   = errors.New("missing webhook-id, webhook-timestamp or webhook-signature header")
	ErrBadTimestamp     = errors.New("webhook-timestamp is not a Unix time in seconds")
	ErrTimestampSkew    = errors.New("webhook-timestamp outside the allowed tolerance")
	ErrNoMatchingSig    = errors.New("no webhook-signature entry matches any configured secret")
	ErrMalformedSecret  = errors.New("webhook secret must be whsec_ followed by base64")
	ErrNoSecretsDefined = errors.New("no webhook secret configured")
)

// Secret is a decoded signing key. Its String and LogValue never reveal it.
type Secret struct {
	key []byte
	// macs holds keyed HMACs ready to reset and reuse: hmac.New derives
	// the inner and outer keys anew, two hash blocks per webhook.
	macs *sync.Pool
}

func newSecret(key []byte) Secret {
	return Secret{key: key, macs: &sync.Pool{New: func() any { return hmac.New(sha256.New, key) }}}
}

// ParseSecret decodes a "whsec_<base64>" secret. The prefix is optional so that
// keys copied from ServiceNow's system property (base64 only) also work.
func ParseSecret(s string) (Secret, error) {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, secretPrefix)
	if s == "" {
		return Secret{}, ErrMalformedSecret
	}
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		if key, err = base64.RawStdEncoding.DecodeString(s); err != nil {
			return Secret{}, ErrMalformedSecret
		}
	}
	if len(key) < 16 {
		return Secret{}, fmt.Errorf("%w (key shorter than 16 bytes)", ErrMalformedSecret)
	}
	return newSecret(key), nil
}

// ParseSecrets parses a comma-separated list; the first signs, all verify.
func ParseSecrets(list string) ([]Secret, error) {
	var out []Secret
	for i, part := range strings.Split(list, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		s, err := ParseSecret(part)
		if err != nil {
			return nil, fmt.Errorf("secret #%d: %w", i+1, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// NewSecret wraps raw key bytes (tests, generated secrets).
func NewSecret(key []byte) Secret { return newSecret(append([]byte(nil), key...)) }

// Encoded returns the "whsec_..." form. Use only where the secret must be handed
// to its owner (e.g. `bridge sim` printing its credentials), never in logs.
func (s Secret) Encoded() string { return secretPrefix + base64.StdEncoding.EncodeToString(s.key) }

// KeyBase64 returns the base64 key, which is what ServiceNow's
// GlideCertificateEncryption.generateMac takes.
func (s Secret) KeyBase64() string { return base64.StdEncoding.EncodeToString(s.key) }

// IsZero reports whether the secret is unset.
func (s Secret) IsZero() bool { return len(s.key) == 0 }

// A key prints, logs and marshals as secret.Redacted, like every credential.
func (Secret) String() string               { return secret.Redacted }
func (Secret) GoString() string             { return secret.Redacted }
func (Secret) LogValue() slog.Value         { return slog.StringValue(secret.Redacted) }
func (Secret) MarshalText() ([]byte, error) { return []byte(secret.Redacted), nil }

// Sign returns one "v1,<base64 mac>" signature entry.
func Sign(s Secret, id string, ts int64, body []byte) string {
	return "v1," + base64.StdEncoding.EncodeToString(s.mac(nil, id, strconv.FormatInt(ts, 10), body))
}

// mac appends the signature of the timestamp as the sender wrote it (the
// scheme signs the header's bytes, not a re-rendering of its number) to b.
func (s Secret) mac(b []byte, id, ts string, body []byte) []byte {
	var h hash.Hash
	if s.macs != nil {
		h = s.macs.Get().(hash.Hash)
		defer s.macs.Put(h)
		h.Reset()
	} else {
		h = hmac.New(sha256.New, s.key)
	}
	h.Write([]byte(id))
	h.Write([]byte{'.'})
	h.Write([]byte(ts))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(b)
}

// SetHeaders signs body with the first secret and sets the three headers.
func SetHeaders(h http.Header, s Secret, id string, ts time.Time, body []byte) {
	unix := ts.Unix()
	h.Set(HeaderID, id)
	h.Set(HeaderTimestamp, strconv.FormatInt(unix, 10))
	h.Set(HeaderSignature, Sign(s, id, unix, body))
}

// Verifier checks Standard Webhooks signatures against a set of secrets.
type Verifier struct {
	Secrets   []Secret
	Tolerance time.Duration
	Now       func() time.Time
}

// ReplaySpan is how long after its first delivery a captured signed request
// still verifies: its timestamp may be up to tolerance ahead of the
// receiver's clock then, and it is accepted until tolerance past that
// timestamp. A receiver de-duplicating by message id must remember ids for
// longer than this, or a replay is taken for a new message.
func ReplaySpan(tolerance time.Duration) time.Duration { return 2 * tolerance }

// Verify checks the headers and body. It compares every entry against every
// secret in constant time per comparison, so rotation works and timing leaks
// nothing about which byte differed.
func (v *Verifier) Verify(id, timestamp, signature string, body []byte) error {
	if len(v.Secrets) == 0 {
		return ErrNoSecretsDefined
	}
	if id == "" || timestamp == "" || signature == "" {
		return ErrMissingHeaders
	}
	ts, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return ErrBadTimestamp
	}
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	tol := v.Tolerance
	if tol <= 0 {
		tol = 5 * time.Minute
	}
	skew := now().Sub(time.Unix(ts, 0))
	if skew > tol || skew < -tol {
		return ErrTimestampSkew
	}
	var small [2][sha256.Size]byte
	var smallMacs [2][]byte
	macs := smallMacs[:0]
	for i, s := range v.Secrets {
		var b []byte
		if i < len(small) {
			b = small[i][:0]
		}
		macs = append(macs, s.mac(b, id, timestamp, body))
	}
	matched := false
	var got [sha256.Size + 3]byte
	for entry := range strings.FieldsSeq(signature) {
		version, sig, found := strings.Cut(entry, ",")
		if !found || version != "v1" || base64.StdEncoding.DecodedLen(len(sig)) > len(got) {
			continue
		}
		n, err := base64.StdEncoding.Decode(got[:], []byte(sig))
		if err != nil {
			continue
		}
		for _, m := range macs {
			if hmac.Equal(got[:n], m) { // constant-time comparison
				matched = true
			}
		}
	}
	if !matched {
		return ErrNoMatchingSig
	}
	return nil
}
