package snclient

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/secret"
)

// TableAPIVersion selects the Table API path. The versions differ in one way
// that matters: v1 answers an empty query result with 404 "No Record found",
// v2 with 200 and []. The client turns both into an empty list.
type TableAPIVersion string

// Table API versions.
const (
	TableAPIv1 TableAPIVersion = "v1" // /api/now/table
	TableAPIv2 TableAPIVersion = "v2" // /api/now/v2/table
)

// Config configures a Client for one ServiceNow instance. Zero values take
// the defaults documented on each field; Validate reports what is wrong.
type Config struct {
	// InstanceURL is the instance's base URL, e.g. https://dev12345.service-now.com.
	InstanceURL  string
	ClientID     string
	ClientSecret secret.String

	// TableAPI is v1 (default) or v2.
	TableAPI TableAPIVersion

	// HTTPClient sends every request, the token exchange included. Default:
	// a client with its own transport; per-attempt deadlines come from
	// RequestTimeout, not from the client.
	HTTPClient *http.Client
	// RequestTimeout bounds one attempt, body included. Default 30s.
	RequestTimeout time.Duration

	// TokenMinValidity: a call never uses a token with less left than this
	// (default 30s). For a token whose whole lifetime is under twice this,
	// half its lifetime is used instead, so a short-lived token is usable.
	TokenMinValidity time.Duration
	// RefreshLeadMin/Max: the background refresher renews the token a
	// uniformly jittered time in [min,max] before it expires (default
	// 60s–180s), capped at half the token's lifetime. The jitter keeps
	// several bridge replicas from refreshing in lockstep.
	RefreshLeadMin, RefreshLeadMax time.Duration
	// DisableBackgroundRefresh leaves refreshing to callers (tests).
	DisableBackgroundRefresh bool

	// Retry: exponential backoff with full jitter, starting at
	// RetryInitial (default 250ms), capped per wait at RetryMax (default
	// 20s), the whole call bounded by RetryMaxElapsed (default 2m) and
	// by the caller's context.
	RetryInitial, RetryMax, RetryMaxElapsed time.Duration

	// The client learns the instance's rate limit rules from the
	// X-RateLimit-* headers of its answers and paces itself to spend each
	// rule's count evenly until the rule's window resets (see pacer).
	// RateLimit caps the request rate on top, in requests per second (0:
	// no cap; BRIDGE_SN_RATE_LIMIT), e.g. to leave part of the user's quota
	// to something else; RateBurst is its burst (default 1 when RateLimit >
	// 0). SetRateLimit changes the cap at run time.
	RateLimit float64
	RateBurst int
	// RateWindow is the window a rule is taken to count over until two of
	// its resets show it (default an hour, as on ServiceNow). On first
	// sight of a rule mid-window the client assumes the window so far was
	// spent at the rule's even rate (by an earlier run or another replica),
	// and so starts at that rate. Tests against a simulator with shorter
	// windows set it to theirs.
	RateWindow time.Duration
	// Unpaced turns the learning off: only RateLimit and the Retry-After
	// of 429s pace the client (the client before issue 16; for comparison).
	Unpaced bool

	// BreakerFailures consecutive failures (5xx, network, timeouts) open
	// the circuit breaker (default 5); after BreakerOpenFor (default 30s)
	// it half-opens and lets BreakerHalfOpenRequests (default 1) through.
	BreakerFailures         uint32
	BreakerOpenFor          time.Duration
	BreakerHalfOpenRequests uint32

	// The fields of a table are learned on first use and cached for
	// SchemaTTL (default 1h), merged from: MappedFields, the fields of one
	// record the Table API returns (every field the integration user may
	// read), sys_dictionary where readable (it is not for the least-
	// privilege roles) and KnownFields. Queries may use only known fields
	// (ServiceNow silently drops a clause on an unknown one); learning never
	// blocks a write (see FieldInfo and checkWrite).
	//
	// MappedFields lists, per table, the fields the caller reads and
	// writes (the mapping's ServiceNow fields): always accepted.
	MappedFields map[string][]string
	// KnownFields lists, per table, fields to accept beyond those learned
	// (BRIDGE_SN_KNOWN_FIELDS): for fields no record shows and no readable
	// dictionary lists, e.g. while a table is empty.
	KnownFields map[string][]string
	// TableParents names the tables a table extends, whose dictionary
	// entries it inherits (incident's number, state, ... are defined on
	// task). Default: incident, problem, change_request, sc_req_item,
	// sc_task extend task.
	TableParents map[string][]string
	SchemaTTL    time.Duration
	// SkipFieldValidation turns query validation off (not recommended:
	// ServiceNow silently drops clauses on unknown fields).
	SkipFieldValidation bool

	// PageSize is the sysparm_limit of scans (default 1000).
	PageSize int

	// Registerer receives the client's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

var defaultTableParents = map[string][]string{
	"incident":       {"task"},
	"problem":        {"task"},
	"change_request": {"task"},
	"sc_req_item":    {"task"},
	"sc_task":        {"task"},
}

// withDefaults returns a copy with every zero value replaced by its default.
func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.TableAPI == "" {
		c.TableAPI = TableAPIv1
	}
	def(&c.RequestTimeout, 30*time.Second)
	def(&c.TokenMinValidity, 30*time.Second)
	def(&c.RefreshLeadMin, 60*time.Second)
	def(&c.RefreshLeadMax, 180*time.Second)
	if c.RefreshLeadMax < c.RefreshLeadMin {
		c.RefreshLeadMax = c.RefreshLeadMin
	}
	def(&c.RetryInitial, 250*time.Millisecond)
	def(&c.RetryMax, 20*time.Second)
	def(&c.RetryMaxElapsed, 2*time.Minute)
	def(&c.RateWindow, time.Hour)
	if c.RateLimit > 0 && c.RateBurst == 0 {
		c.RateBurst = 1
	}
	if c.BreakerFailures == 0 {
		c.BreakerFailures = 5
	}
	def(&c.BreakerOpenFor, 30*time.Second)
	if c.BreakerHalfOpenRequests == 0 {
		c.BreakerHalfOpenRequests = 1
	}
	if c.TableParents == nil {
		c.TableParents = defaultTableParents
	}
	def(&c.SchemaTTL, time.Hour)
	if c.PageSize == 0 {
		c.PageSize = 1000
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

var tableNameRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,79}$`)

// Validate reports every problem in the configuration, defaults applied.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	u, err := url.Parse(c.InstanceURL)
	switch {
	case c.InstanceURL == "":
		errs = append(errs, errors.New("instance URL is empty (BRIDGE_SN_INSTANCE_URL, e.g. https://dev12345.service-now.com)"))
	case err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "":
		errs = append(errs, fmt.Errorf("instance URL %q is not an http(s) URL", c.InstanceURL))
	case u.Path != "" && u.Path != "/":
		errs = append(errs, fmt.Errorf("instance URL %q has a path; give the base URL only", c.InstanceURL))
	}
	if c.ClientID == "" {
		errs = append(errs, errors.New("client id is empty (BRIDGE_SN_CLIENT_ID)"))
	}
	if c.ClientSecret == "" {
		errs = append(errs, errors.New("client secret is empty (BRIDGE_SN_CLIENT_SECRET)"))
	}
	if c.TableAPI != TableAPIv1 && c.TableAPI != TableAPIv2 {
		errs = append(errs, fmt.Errorf("table API version %q: want v1 or v2", c.TableAPI))
	}
	for name, d := range map[string]time.Duration{
		"request timeout": c.RequestTimeout, "token min validity": c.TokenMinValidity,
		"refresh lead min": c.RefreshLeadMin, "retry initial": c.RetryInitial, "retry max": c.RetryMax,
		"retry max elapsed": c.RetryMaxElapsed, "breaker open time": c.BreakerOpenFor, "schema TTL": c.SchemaTTL,
		"rate window": c.RateWindow,
	} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s is negative (%s)", name, d))
		}
	}
	if c.RateLimit < 0 || c.RateBurst < 0 {
		errs = append(errs, errors.New("rate limit and burst must not be negative"))
	}
	if c.PageSize < 1 || c.PageSize > 10000 {
		errs = append(errs, fmt.Errorf("page size %d: want 1..10000 (the Table API's maximum)", c.PageSize))
	}
	for what, m := range map[string]map[string][]string{"known fields": c.KnownFields, "mapped fields": c.MappedFields} {
		for table, fields := range m {
			if !tableNameRE.MatchString(table) {
				errs = append(errs, fmt.Errorf("%s: %q is not a table name", what, table))
			}
			for _, f := range fields {
				if !fieldNameRE.MatchString(f) || strings.Contains(f, ".") {
					errs = append(errs, fmt.Errorf("%s of %s: %q is not a field name", what, table, f))
				}
			}
		}
	}
	return errors.Join(errs...)
}

func (c Config) baseURL() string { return strings.TrimSuffix(c.InstanceURL, "/") }

func (c Config) tablePath(table string) string {
	if c.TableAPI == TableAPIv2 {
		return "/api/now/v2/table/" + table
	}
	return "/api/now/table/" + table
}
