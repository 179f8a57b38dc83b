package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nowbridge/nowbridge/internal/console/tokens"
)

// Cookie names carry the product's name: cookies are per host, not per
// port, and the helpdesk or another tool on 127.0.0.1 shares the jar.
const (
	sessionCookie = "nowbridge_console_session"
	csrfCookie    = "nowbridge_console_csrf"
	flashCookie   = "nowbridge_console_flash"

	// csrfField is the form field every action posts the CSRF token in.
	csrfField = "csrf"

	sessionTTL = 12 * time.Hour
)

// principal is who a request acts as.
type principal struct {
	// id is the token's identity (tokens.Token.Identity); "" without tokens.
	id string
	// key signs this principal's session, CSRF and confirmation tokens:
	// derived from its token, so a session survives a restart and works on
	// every replica with the same tokens, and rotating the token ends it;
	// without tokens the process's random key.
	key []byte
}

// who names the principal in logs: its identity, else the client's address.
func (p principal) who(r *http.Request) string {
	if p.id != "" {
		return p.id
	}
	return r.RemoteAddr
}

// auth checks requests against the configured tokens.
type auth struct {
	tokens     tokens.Set
	processKey []byte
	now        func() time.Time
}

func newAuth(set tokens.Set, now func() time.Time) *auth {
	k := make([]byte, 32)
	_, _ = rand.Read(k) // never fails (crypto/rand)
	return &auth{tokens: set, processKey: k, now: now}
}

// required reports whether requests need a token.
func (a *auth) required() bool { return len(a.tokens) > 0 }

func tokenKey(t tokens.Token) []byte {
	m := hmac.New(sha256.New, []byte(t.Value()))
	m.Write([]byte("nowbridge console keys v1"))
	return m.Sum(nil)
}

func mac(key []byte, parts ...string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(strings.Join(parts, "\x00")))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// authenticate finds the request's principal: anyone without tokens, else
// the holder of the token in an Authorization: Bearer header or of a valid
// session cookie.
func (a *auth) authenticate(r *http.Request) (principal, bool) {
	if !a.required() {
		return principal{key: a.processKey}, true
	}
	if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		if t, ok := a.tokens.Match(strings.TrimSpace(h[7:])); ok {
			return principal{id: t.Identity(), key: tokenKey(t)}, true
		}
		return principal{}, false
	}
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return principal{}, false
	}
	return a.session(c.Value)
}

// newSession is a session cookie's value: identity, expiry and their MAC
// under the token's key.
func (a *auth) newSession(t tokens.Token) string {
	id := base64.RawURLEncoding.EncodeToString([]byte(t.Identity()))
	exp := strconv.FormatInt(a.now().Add(sessionTTL).Unix(), 10)
	return id + "." + exp + "." + mac(tokenKey(t), "session", id, exp)
}

func (a *auth) session(v string) (principal, bool) {
	parts := strings.Split(v, ".")
	if len(parts) != 3 {
		return principal{}, false
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return principal{}, false
	}
	t, ok := a.tokens.ByIdentity(string(raw))
	if !ok {
		return principal{}, false // its token was removed
	}
	key := tokenKey(t)
	if !equal(parts[2], mac(key, "session", parts[0], parts[1])) {
		return principal{}, false
	}
	exp, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || a.now().Unix() >= exp {
		return principal{}, false
	}
	return principal{id: t.Identity(), key: key}, true
}

// csrfToken returns the request's CSRF token (signed double submit): the
// cookie's when it is valid for p, else a new one, set as a cookie. The
// token is a nonce and its MAC under p's key bound to p's identity, so a
// token planted from elsewhere (a sibling host can set cookies) or taken
// from another session does not verify.
func csrfToken(w http.ResponseWriter, r *http.Request, p principal) string {
	if c, err := r.Cookie(csrfCookie); err == nil && validCSRF(c.Value, p) {
		return c.Value
	}
	n := make([]byte, 18)
	_, _ = rand.Read(n)
	nonce := base64.RawURLEncoding.EncodeToString(n)
	v := nonce + "." + mac(p.key, "csrf", p.id, nonce)
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: v, Path: "/", HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	return v
}

func validCSRF(v string, p principal) bool {
	nonce, sig, ok := strings.Cut(v, ".")
	return ok && nonce != "" && equal(sig, mac(p.key, "csrf", p.id, nonce))
}

// errCSRF explains a refused action.
var errCSRF = errors.New("the form's CSRF token is missing or does not match this session: reload the page and submit again")

// checkCSRF verifies an action: the form's token equals the cookie's, and
// that is valid for p.
func checkCSRF(r *http.Request, p principal) error {
	c, err := r.Cookie(csrfCookie)
	if err != nil {
		return errCSRF
	}
	form := r.PostFormValue(csrfField)
	if form == "" || !equal(form, c.Value) || !validCSRF(form, p) {
		return errCSRF
	}
	return nil
}

// confirmation is the token the purge confirmation page hands its form, so
// that a purge happens only through that page: it binds the principal, the
// pipeline and the last dead letter the page showed.
func confirmation(p principal, pipeline string, last uint64) string {
	return mac(p.key, "purge", p.id, pipeline, strconv.FormatUint(last, 10))
}
