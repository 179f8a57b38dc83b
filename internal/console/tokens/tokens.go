// Package tokens parses the console's bearer tokens (BRIDGE_ADMIN_TOKEN):
// a comma-separated list, each entry a token or name:token, so several
// people can hold tokens of their own and the console's log says whose
// acted. It is a leaf package, so the configuration can validate the list
// with the rules the console applies.
package tokens

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// MinLength is the shortest token accepted: a guessable token would guard
// an endpoint that retries and purges dead letters.
const MinLength = 16

var nameRe = regexp.MustCompile(`^[A-Za-z0-9._@-]{1,64}$`)

// Token is one configured token.
type Token struct {
	// Name is the holder the entry names (name:token), else "" .
	Name  string
	value string
}

// Identity names the holder in logs and on the page: the entry's name, or
// for an unnamed token a fingerprint (the first 8 hex digits of its
// SHA-256), which tells tokens apart without revealing them.
func (t Token) Identity() string {
	if t.Name != "" {
		return t.Name
	}
	sum := sha256.Sum256([]byte(t.value))
	return "token:" + hex.EncodeToString(sum[:4])
}

// Value is the token itself; use it only to derive keys.
func (t Token) Value() string { return t.value }

// Set is the parsed list.
type Set []Token

// Parse reads a comma-separated list of tokens, each optionally prefixed
// with a name and a colon. Errors name the entry by position and never
// contain a token.
func Parse(s string) (Set, error) {
	var out Set
	var errs []error
	seen := map[string]bool{}
	i := 0
	for entry := range strings.SplitSeq(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		i++
		t := Token{value: entry}
		if name, value, ok := strings.Cut(entry, ":"); ok {
			if !nameRe.MatchString(name) {
				errs = append(errs, fmt.Errorf("entry %d: the name before ':' must be 1-64 letters, digits, '.', '_', '@' or '-'", i))
				continue
			}
			t = Token{Name: name, value: value}
		}
		switch {
		case len(t.value) < MinLength:
			errs = append(errs, fmt.Errorf("entry %d: a token must be at least %d characters (create one with `openssl rand -hex 32`)", i, MinLength))
			continue
		case strings.ContainsFunc(t.value, func(r rune) bool { return r <= ' ' || r == 0x7f }):
			errs = append(errs, fmt.Errorf("entry %d: a token must not contain spaces or control characters", i))
			continue
		case seen[t.Identity()]:
			errs = append(errs, fmt.Errorf("entry %d: %s is named twice", i, t.Identity()))
			continue
		}
		seen[t.Identity()] = true
		out = append(out, t)
	}
	return out, errors.Join(errs...)
}

// Match returns the token equal to presented, comparing every entry in
// constant time.
func (s Set) Match(presented string) (Token, bool) {
	var found Token
	ok := false
	for _, t := range s {
		if subtle.ConstantTimeCompare([]byte(t.value), []byte(presented)) == 1 {
			found, ok = t, true
		}
	}
	return found, ok
}

// ByIdentity returns the token with that identity.
func (s Set) ByIdentity(id string) (Token, bool) {
	for _, t := range s {
		if t.Identity() == id {
			return t, true
		}
	}
	return Token{}, false
}
