package snsim

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"time"
)

// OAuthMode selects how the token endpoint and the API treat credentials.
type OAuthMode int

const (
	// OAuthOK issues tokens for the configured client id and secret.
	OAuthOK OAuthMode = iota
	// OAuthGrantDisabled: glide.oauth.inbound.client.credential.grant_type.enabled
	// is false; every token request fails with the generic 401.
	OAuthGrantDisabled
	// OAuthNoAppUser: the registry record has no OAuth Application User and
	// the token request fails (ServiceNow's documented behaviour).
	OAuthNoAppUser
	// OAuthTokenNotAuthenticated: tokens are issued, but every API call
	// answers 401 User Not Authenticated (the field-reported form of a
	// missing application user).
	OAuthTokenNotAuthenticated
)

func (m OAuthMode) String() string {
	switch m {
	case OAuthGrantDisabled:
		return "grant-disabled"
	case OAuthNoAppUser:
		return "no-app-user"
	case OAuthTokenNotAuthenticated:
		return "token-not-authenticated"
	}
	return "ok"
}

// SetOAuthMode switches the OAuth behaviour.
func (s *Server) SetOAuthMode(m OAuthMode) {
	s.knobMu.Lock()
	s.oauth = m
	s.knobMu.Unlock()
}

// SetTokenTTL changes expires_in of tokens issued from now on.
func (s *Server) SetTokenTTL(d time.Duration) {
	s.knobMu.Lock()
	s.ttl = d
	s.knobMu.Unlock()
}

// RevokeTokens invalidates every issued token: the next API call with one
// answers 401 User Not Authenticated.
func (s *Server) RevokeTokens() {
	s.knobMu.Lock()
	s.tokens = map[string]tokenInfo{}
	s.knobMu.Unlock()
}

// TokenRequests counts requests to /oauth_token.do (successful or not).
func (s *Server) TokenRequests() int {
	s.knobMu.Lock()
	defer s.knobMu.Unlock()
	return s.tokReq
}

// TokensIssued counts tokens handed out.
func (s *Server) TokensIssued() int {
	s.knobMu.Lock()
	defer s.knobMu.Unlock()
	return s.tokIss
}

// Faults injects failures into API requests. Rates are probabilities in
// [0,1], drawn from the seeded generator.
type Faults struct {
	Latency       time.Duration // added to every request, token requests included
	LatencyJitter time.Duration // plus a uniform random part up to this
	ErrorRate     float64       // Table API requests answered 503 Service Unavailable
	CancelRate    float64       // Table API requests answered 503 Transaction cancelled
	DropRate      float64       // Table API connections closed without an answer
	// SemaphoreRate answers Table API requests 429 as an instance whose API
	// semaphores are exhausted does: without X-RateLimit-* headers and
	// without Retry-After, so a client must back off on its own.
	SemaphoreRate float64
	// TokenErrorRate answers token requests with 503 (a failed refresh).
	TokenErrorRate float64
}

func (f Faults) validate() error {
	for name, v := range map[string]float64{"ErrorRate": f.ErrorRate, "CancelRate": f.CancelRate, "DropRate": f.DropRate,
		"SemaphoreRate": f.SemaphoreRate, "TokenErrorRate": f.TokenErrorRate} {
		if v < 0 || v > 1 {
			return fmt.Errorf("snsim: fault %s must be within [0,1], got %g", name, v)
		}
	}
	if f.Latency < 0 || f.LatencyJitter < 0 {
		return fmt.Errorf("snsim: latency must not be negative")
	}
	return nil
}

// SetFaults replaces the fault injection settings.
func (s *Server) SetFaults(f Faults) error {
	if err := f.validate(); err != nil {
		return err
	}
	s.knobMu.Lock()
	s.faults = f
	s.knobMu.Unlock()
	return nil
}

func (s *Server) currentFaults() Faults {
	s.knobMu.Lock()
	defer s.knobMu.Unlock()
	return s.faults
}

// Grants are what an admin may give the integration user beyond the roles
// the project documents (snc_platform_rest_api_access + itil). Without
// them, the tables they name are hidden from the API user as on a real
// instance: lists answer 200 with no rows while X-Total-Count counts the
// rows the ACL hides (and Link pages through them), single reads 404.
// Direct test calls are never restricted.
type Grants struct {
	// Dictionary grants read on sys_dictionary (the admin or
	// personalize_dictionary role).
	Dictionary bool
	// AuditDelete grants read on sys_audit_delete (admin, or an ACL an admin
	// adds for the integration user).
	AuditDelete bool
	// HRRole is the HR scope role the integration user holds, if any:
	// sn_hr_core_case (and the journal entries of HR cases) is readable with
	// RoleHRCaseReader, readable and writable with RoleHRCaseWriter or
	// RoleHRAdmin, and hidden otherwise (itil gives nothing in the HR scope).
	HRRole string
}

// The HR scope's roles (see Grants.HRRole and docs/servicenow-tables.md).
const (
	RoleHRCaseReader = "sn_hr_core.case_reader"
	RoleHRCaseWriter = "sn_hr_core.case_writer"
	RoleHRAdmin      = "sn_hr_core.admin"
)

// HRRoles lists the HR roles Grants.HRRole accepts, least privilege first.
func HRRoles() []string { return []string{RoleHRCaseReader, RoleHRCaseWriter, RoleHRAdmin} }

func (g Grants) validate() error {
	if g.HRRole != "" && !slices.Contains(HRRoles(), g.HRRole) {
		return fmt.Errorf("snsim: HR role %q is not one of %s", g.HRRole, strings.Join(HRRoles(), ", "))
	}
	return nil
}

// hrRead and hrWrite say what the granted HR role allows on HR cases.
func (g Grants) hrRead() bool  { return g.HRRole != "" }
func (g Grants) hrWrite() bool { return g.HRRole == RoleHRCaseWriter || g.HRRole == RoleHRAdmin }

// SetGrants replaces the integration user's extra grants; an unknown HR
// role is an error and changes nothing.
func (s *Server) SetGrants(g Grants) error {
	if err := g.validate(); err != nil {
		return err
	}
	s.knobMu.Lock()
	s.grants = g
	s.knobMu.Unlock()
	return nil
}

// Grants returns the integration user's extra grants.
func (s *Server) Grants() Grants {
	s.knobMu.Lock()
	defer s.knobMu.Unlock()
	return s.grants
}

// ACL restricts what the API user (the OAuth application user) sees and
// may do. Direct test calls are never restricted.
type ACL struct {
	// NoRoles: the user lacks the itil role (it has no role, or only
	// snc_platform_rest_api_access). It still authenticates, but every
	// ticket table (HR cases too, whatever Grants.HRRole says) and their
	// journal entries are hidden: lists answer 200 with [] while
	// X-Total-Count counts the hidden rows ("103 counted, 0 returned"),
	// single reads 404, writes 403. sys_user, sys_user_group and sys_choice
	// stay readable.
	NoRoles bool
	// DenyWrites: POST/PUT/PATCH/DELETE answer 403 ACL Exception Update
	// Failed due to security constraints.
	DenyWrites bool
	// HideRow hides rows the user may not read. It is applied after
	// sysparm_limit, as the platform does: pages come back short or empty
	// while more rows follow, and X-Total-Count still counts hidden rows.
	// It runs under the simulator's read lock: it must not call the Server.
	HideRow func(table string, rec Record) bool
	// HiddenFields are silently omitted per table; a query naming one
	// answers 403 Insufficient rights to query records.
	HiddenFields map[string][]string
}

// SetACL replaces the ACL settings.
func (s *Server) SetACL(a ACL) {
	s.knobMu.Lock()
	s.acl = a
	s.knobMu.Unlock()
}

// HideFraction returns an ACL.HideRow that hides about the given fraction
// of rows, chosen by a hash of sys_id, so the same rows stay hidden.
func HideFraction(f float64) func(table string, rec Record) bool {
	return func(_ string, rec Record) bool {
		h := sha256.Sum256([]byte(rec["sys_id"]))
		return float64(binary.BigEndian.Uint64(h[:8])>>11)/float64(1<<53) < f
	}
}
