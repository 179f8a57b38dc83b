package snclient

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Sentinels for errors.Is. *APIError matches the one for its status;
// *TokenError matches ErrTokenExchange (and ErrUnauthorized for a 401).
var (
	ErrUnauthorized  = errors.New("servicenow: unauthorized")
	ErrForbidden     = errors.New("servicenow: forbidden")
	ErrNotFound      = errors.New("servicenow: not found")
	ErrBadRequest    = errors.New("servicenow: bad request")
	ErrRateLimited   = errors.New("servicenow: rate limited")
	ErrServer        = errors.New("servicenow: server error")
	ErrBreakerOpen   = errors.New("servicenow: circuit breaker open")
	ErrTokenExchange = errors.New("servicenow: OAuth token exchange failed")
	// ErrInvalidQuery is a query the client refuses to send: it names a
	// field the table does not have, or cannot be encoded faithfully.
	ErrInvalidQuery = errors.New("invalid ServiceNow query")
	// ErrACLHidden matches *ACLWarning.
	ErrACLHidden = errors.New("servicenow: ACL may be hiding rows or fields")
	// ErrClosed is returned by calls on a closed Client.
	ErrClosed = errors.New("servicenow client closed")
)

// Hints: what a person should do about an error. Tests match on them.
const (
	HintTokenRejected = "client id/secret wrong or the client-credentials grant is not enabled " +
		"(glide.oauth.inbound.client.credential.grant_type.enabled); ServiceNow answers the same when the " +
		"Application Registry record has no OAuth Application User"
	HintAppUser = "token exchange works but the API rejects it: set the OAuth Application User on the " +
		"Application Registry record"
	HintRoles = "the OAuth application user likely lacks a role: grant snc_platform_rest_api_access " +
		"(REST API access) and itil (incident and task tables)"
	HintQueryRights = "the query uses fields the OAuth application user may not read: grant it read access " +
		"(role itil for incident) or leave those fields out of the query"
	HintDataPolicy = "a data policy rejected the write: e.g. resolving an incident (state 6) needs close_code " +
		"and close_notes"
	HintACLHidden = "ACL may be hiding rows/fields: the OAuth application user needs read access " +
		"(role itil for incident, snc_platform_rest_api_access)"
	HintNotFound    = "the record does not exist or an ACL hides it from the OAuth application user"
	HintRateLimited = "a rate limit rule (sys_rate_limit_rules) is exhausted for the integration user: the client paces itself to the rules it learns, so something else spends the same user's quota (another bridge replica, a script) or the rule was lowered; ask for a higher count, give the other consumer its own user, or cap each bridge with BRIDGE_SN_RATE_LIMIT"
	// HintRateLimitHeld: the client holds a request back to stay within a
	// rule (see the pacer), longer than the caller could wait.
	HintRateLimitHeld = "the instance's rate limit rule (sys_rate_limit_rules) allows the integration user no more requests until then, " +
		"and the client holds requests back rather than meet 429s: it is retried after the wait; if the bridge falls behind, ask for a higher count"
	HintServer        = "the instance failed or shed load (semaphores exhausted); retried with backoff"
	HintUnknownField  = "ServiceNow silently drops a clause on a field the table does not have (and may return everything): fix the field name or the mapping"
	HintTokenEndpoint = "no OAuth token endpoint answered at this URL: check BRIDGE_SN_INSTANCE_URL (a hibernating developer instance answers with a web page)"

	// HintUnknownOrHiddenField: learned from a record, without sys_dictionary.
	HintUnknownOrHiddenField = HintUnknownField + "; if the field exists, the integration user cannot read it (no record shows it, " +
		"and sys_dictionary is not readable): grant read on the field, or list it in BRIDGE_SN_KNOWN_FIELDS"

	// HintFieldsIncomplete: no record and no sys_dictionary row could be
	// read, so only mapped, configured and system fields are known.
	HintFieldsIncomplete = "the client could not learn the table's fields (no record readable, sys_dictionary not readable): " +
		"list the fields in BRIDGE_SN_KNOWN_FIELDS (e.g. incident=number,state,short_description), or grant the integration user " +
		"read on sys_dictionary (role personalize_dictionary); ServiceNow silently drops a clause on a field that does not exist, so unverified fields are not queried"
)

// APIError is an error answer from ServiceNow, with ServiceNow's own
// message and detail and a hint saying what to fix.
type APIError struct {
	Status  int
	Method  string
	Table   string
	SysID   string
	Message string // error.message of ServiceNow's body
	Detail  string // error.detail
	Hint    string
	// RetryAfter is the wait a 429 asked for (0 when it gave none).
	RetryAfter time.Duration
	// RateLimitRule is X-RateLimit-Rule of a 429.
	RateLimitRule string
}

func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString("servicenow: ")
	if e.Method != "" {
		b.WriteString(e.Method)
		b.WriteString(" ")
	}
	if e.Table != "" {
		b.WriteString(e.Table)
		if e.SysID != "" {
			b.WriteString("/")
			b.WriteString(e.SysID)
		}
		b.WriteString(": ")
	}
	fmt.Fprintf(&b, "%d", e.Status)
	if e.Message != "" {
		b.WriteString(" ")
		b.WriteString(e.Message)
	}
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	if e.Hint != "" {
		b.WriteString(" (hint: ")
		b.WriteString(e.Hint)
		b.WriteString(")")
	}
	return b.String()
}

// Permanent reports an answer that the same request will get again until a
// person changes something: a 4xx (missing role or ACL, data policy, bad
// request, record or table not found) other than 408, 409, 425 and 429,
// and a 401 with a freshly exchanged token (no OAuth Application User).
// 5xx, 429 and a 401 that a new token may cure are temporary.
func (e *APIError) Permanent() bool {
	switch {
	case e.Status == 401:
		return e.Hint == HintAppUser
	case e.Status == 408 || e.Status == 409 || e.Status == 425 || e.Status == 429:
		return false
	}
	return e.Status >= 400 && e.Status < 500
}

// Is maps the status to a sentinel.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrUnauthorized:
		return e.Status == 401
	case ErrForbidden:
		return e.Status == 403
	case ErrNotFound:
		return e.Status == 404
	case ErrBadRequest:
		return e.Status == 400
	case ErrRateLimited:
		return e.Status == 429
	case ErrServer:
		return e.Status >= 500
	}
	return false
}

// TokenError is a failed token exchange at /oauth_token.do.
type TokenError struct {
	Status      int    // 0 for a network error
	Code        string // OAuth "error"
	Description string // OAuth "error_description"
	Hint        string
	Err         error // the underlying cause, without credentials
	transient   bool
}

func (e *TokenError) Error() string {
	var b strings.Builder
	b.WriteString("servicenow: OAuth token exchange failed")
	if e.Status != 0 {
		fmt.Fprintf(&b, ": %d", e.Status)
	}
	if e.Code != "" || e.Description != "" {
		fmt.Fprintf(&b, " %s/%s", e.Code, e.Description)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	if e.Hint != "" {
		b.WriteString(" (hint: ")
		b.WriteString(e.Hint)
		b.WriteString(")")
	}
	return b.String()
}

func (e *TokenError) Unwrap() error { return e.Err }

// Is matches ErrTokenExchange, and ErrUnauthorized for a 401.
func (e *TokenError) Is(target error) bool {
	return target == ErrTokenExchange || (target == ErrUnauthorized && e.Status == 401)
}

// Temporary reports a failure worth retrying (network, 5xx, 429).
func (e *TokenError) Temporary() bool { return e.transient }

// Permanent reports a refused exchange: wrong client id or secret, the
// grant disabled, no application user, no token endpoint at the URL. A
// setting must change before a retry can succeed.
func (e *TokenError) Permanent() bool { return !e.transient }

// FieldError is a query, field list or write naming fields the table does
// not have, or (Incomplete) fields the client cannot confirm because it
// could not learn the table's fields. The client refuses to send it because
// ServiceNow would drop the clause (or the written field) silently and
// answer as if it were not there. Retrying cannot help: it is permanent.
type FieldError struct {
	Table   string
	Unknown []string
	// Source names the sources the known fields came from, comma-separated
	// (FieldSource*: "mapping, record, sys_dictionary, known_fields").
	Source string
	// Incomplete: neither a record nor sys_dictionary could be read, so the
	// unknown fields may exist; HintFieldsIncomplete says what completes the list.
	Incomplete bool
	// Write: the fields were to be written, not queried.
	Write bool
}

func (e *FieldError) Error() string {
	what := "query on"
	if e.Write {
		what = "write to"
	}
	if e.Incomplete {
		return fmt.Sprintf("invalid ServiceNow %s %s: field(s) %s not known (the table's fields are only partly known, from %s) (hint: %s)",
			what, e.Table, strings.Join(e.Unknown, ", "), e.Source, e.hint())
	}
	return fmt.Sprintf("invalid ServiceNow %s %s: unknown field(s) %s (per %s) (hint: %s)",
		what, e.Table, strings.Join(e.Unknown, ", "), e.Source, e.hint())
}

func (e *FieldError) hint() string {
	switch {
	case e.Incomplete:
		return HintFieldsIncomplete
	case !slices.Contains(strings.Split(e.Source, ", "), FieldSourceDictionary):
		// Without the dictionary, a field the user may not read looks
		// like one that does not exist.
		return HintUnknownOrHiddenField
	}
	return HintUnknownField
}

// Is matches ErrInvalidQuery.
func (e *FieldError) Is(target error) bool { return target == ErrInvalidQuery }

// Permanent is true: the same fields are refused until the mapping, the
// query or a setting changes.
func (e *FieldError) Permanent() bool { return true }

// ACL warning kinds.
const (
	ACLRows   = "rows"
	ACLFields = "fields"
)

// ACLWarning says a list answer looks filtered by ACLs: fewer rows than
// X-Total-Count promises, or asked-for fields missing. It is not returned as
// a call's error (the rows that came are good); pages and pagers carry it.
type ACLWarning struct {
	Table    string
	Kind     string   // ACLRows or ACLFields
	Total    int      // X-Total-Count, for ACLRows
	Returned int      // rows returned, for ACLRows
	Fields   []string // missing fields, for ACLFields
	Hint     string
}

func (w *ACLWarning) Error() string {
	if w.Kind == ACLFields {
		return fmt.Sprintf("servicenow: %s: fields %s asked for but missing from the answer (hint: %s)",
			w.Table, strings.Join(w.Fields, ", "), w.Hint)
	}
	return fmt.Sprintf("servicenow: %s: %d rows returned while X-Total-Count is %d (hint: %s)",
		w.Table, w.Returned, w.Total, w.Hint)
}

// Is matches ErrACLHidden.
func (w *ACLWarning) Is(target error) bool { return target == ErrACLHidden }

// BreakerOpenError is returned without sending while the circuit breaker is
// open (or half-open and busy).
type BreakerOpenError struct {
	// OpenFor is how long to wait before calling again: the configured
	// open period while open, a second while half-open with its trial
	// request in flight.
	OpenFor time.Duration
}

func (e *BreakerOpenError) Error() string {
	return fmt.Sprintf("servicenow: circuit breaker open after repeated failures; requests resume on a trial basis within %s", e.OpenFor)
}

// Is matches ErrBreakerOpen.
func (e *BreakerOpenError) Is(target error) bool { return target == ErrBreakerOpen }

// IsPermanent reports whether retrying the call that returned err cannot
// succeed until a person changes something (a role or ACL, a setting, the
// mapping, the data): a refused token exchange, a ServiceNow 4xx other than
// 401 (unless a fresh token got it), 408, 409, 425 and 429, a *FieldError,
// and a request the client refused to send (ErrInvalidQuery). Consumers
// fail or dead-letter such an error once, with its Hint, rather than retry
// it. Network failures, timeouts, 5xx, 429, an open breaker and the
// caller's context ending are not permanent.
func IsPermanent(err error) bool {
	if err == nil {
		return false
	}
	var p interface{ Permanent() bool }
	if errors.As(err, &p) {
		return p.Permanent()
	}
	return errors.Is(err, ErrInvalidQuery)
}

// Hint returns the actionable hint carried by any error of this package
// in err's chain, or "".
func Hint(err error) string {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Hint
	}
	var te *TokenError
	if errors.As(err, &te) {
		return te.Hint
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		return fe.hint()
	}
	var aw *ACLWarning
	if errors.As(err, &aw) {
		return aw.Hint
	}
	return ""
}

// hintFor picks the hint of a ServiceNow error answer. A 401 gets its hint
// from the caller, which alone knows whether the token was fresh.
func hintFor(status int, message, detail string) string {
	low := strings.ToLower(message + " " + detail)
	switch {
	case status == 403 && strings.Contains(low, "insufficient rights to query"):
		return HintQueryRights
	case status == 403 && (strings.Contains(low, "data policy") || strings.Contains(low, "mandatory")):
		return HintDataPolicy
	case status == 403:
		return HintRoles
	case status == 404:
		return HintNotFound
	case status == 400 && strings.Contains(low, "invalid table"):
		return "the table does not exist on this instance (or the user cannot see it): check BRIDGE_TABLES"
	case status == 400 && strings.Contains(low, "not valid json"):
		return "ServiceNow could not read the request body as JSON"
	case status == 429:
		return HintRateLimited
	case status >= 500:
		return HintServer
	}
	return ""
}

func asAPIError(err error, target **APIError) bool { return errors.As(err, target) }
