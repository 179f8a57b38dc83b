package snsim

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"
)

// DefaultAppUser is the OAuth application user's user name unless Config says otherwise.
const DefaultAppUser = "nowbridge.integration"

// Config configures a simulated instance. Zero values take the defaults.
type Config struct {
	ClientID     string
	ClientSecret string
	// AppUser is the OAuth application user API calls run as; its user name
	// is sys_updated_by of API writes. Default DefaultAppUser.
	AppUser string
	// TokenTTL is expires_in of issued tokens. Default 1799 s.
	TokenTTL time.Duration
	// InstanceName is the webhook body's "instance". Default "dev00000".
	InstanceName string
	Logger       *slog.Logger
	// Seed makes fault injection, drop rates and generated ids repeatable;
	// 0 picks a random seed.
	Seed uint64
	// Now is the instance clock (sys_updated_on, rate-limit windows, token
	// expiry). Default time.Now.
	Now func() time.Time
	// InvalidQueryReturnsNoRows is glide.invalid_query.returns_no_rows.
	InvalidQueryReturnsNoRows bool
	// Webhooks are the business rules' endpoints (see SetWebhooks).
	Webhooks []WebhookTarget
	// WebhookOptions tunes the business-rule emulation (see SetWebhookOptions).
	WebhookOptions WebhookOptions
	// OffsetRowCost is the time each row skipped by sysparm_offset costs,
	// on top of actually walking it: a database reads every skipped row, so
	// deep offsets get slower as they grow. 0 takes 100ns; negative, none.
	OffsetRowCost time.Duration
	// WebhookClient sends webhooks. Default: a client with a 10 s timeout
	// (the script's nowbridge.http_timeout_ms default).
	WebhookClient *http.Client
	// LegacyCloseCodes serves incident.close_code's choices of older
	// releases (Solved (Permanently), ...) instead of the current ones
	// (Solution provided, ...); see CurrentCloseCodes, LegacyCloseCodes.
	LegacyCloseCodes bool
	// Grants are the integration user's grants beyond the least-privilege
	// roles (see SetGrants). Zero: sys_dictionary, sys_audit_delete and
	// sn_hr_core_case are hidden, as they are from
	// snc_platform_rest_api_access + itil.
	Grants Grants
}

// Validate reports configuration that cannot work.
func (c Config) Validate() error {
	if c.TokenTTL < 0 {
		return fmt.Errorf("snsim: TokenTTL must not be negative, got %s", c.TokenTTL)
	}
	for i, w := range c.Webhooks {
		if w.URL == "" {
			return fmt.Errorf("snsim: webhook #%d has no URL", i+1)
		}
		if len(w.Secrets) == 0 {
			return fmt.Errorf("snsim: webhook #%d (%s) has no secret", i+1, w.URL)
		}
	}
	if err := c.Grants.validate(); err != nil {
		return err
	}
	return c.WebhookOptions.validate()
}

// Server is a simulated ServiceNow instance. It is an http.Handler; every
// knob is a method safe to call while requests run.
type Server struct {
	cfg Config
	log *slog.Logger
	now func() time.Time

	mu     sync.RWMutex // guards tables and everything they hold
	tables map[string]*table
	users  map[string]*row   // user_name -> sys_user row
	jidx   map[string][]*row // element_id -> sys_journal_field rows, oldest first

	knobMu  sync.Mutex // guards the knobs below
	oauth   OAuthMode
	ttl     time.Duration
	tokens  map[string]tokenInfo
	acl     ACL
	grants  Grants
	noRows  bool
	faults  Faults
	limits  *limiter
	rng     *mrand.Rand
	stats   map[RequestKey]int
	reqLog  []RequestInfo
	tokReq  int
	tokIss  int
	qprobs  []QueryProblem
	created time.Time
	rowCost time.Duration

	hooks *dispatcher

	att       attachmentState // file bytes of sys_attachment rows (under mu)
	attMax    int64           // com.glide.attachment.max_size in bytes (knobMu)
	attNoHash bool            // sys_attachment has no hash field (knobMu)

	selftest selfTestState // the self-test resource's knobs (selftest.go)
}

// New builds a simulator with its tables, users and dictionary; it panics
// only on a Config that fails Validate (a programming error in a test).
func New(cfg Config) *Server {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	if cfg.AppUser == "" {
		cfg.AppUser = DefaultAppUser
	}
	if cfg.TokenTTL == 0 {
		cfg.TokenTTL = 1799 * time.Second
	}
	if cfg.InstanceName == "" {
		cfg.InstanceName = "dev00000"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Seed == 0 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		cfg.Seed = binary.LittleEndian.Uint64(b[:]) | 1
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger,
		now:     cfg.Now,
		tables:  map[string]*table{},
		users:   map[string]*row{},
		jidx:    map[string][]*row{},
		ttl:     cfg.TokenTTL,
		tokens:  map[string]tokenInfo{},
		noRows:  cfg.InvalidQueryReturnsNoRows,
		grants:  cfg.Grants,
		limits:  newLimiter(),
		rng:     mrand.New(mrand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		stats:   map[RequestKey]int{},
		created: cfg.Now().UTC(),
		att:     attachmentState{data: map[string][]byte{}},
		attMax:  DefaultAttachmentMaxSize,
	}
	schemas := []*tableSchema{userSchema(), groupSchema(), journalSchema(), auditDeleteSchema(), dictionarySchema(), choiceSchema(), attachmentSchema()}
	for _, tt := range ticketTables() {
		schemas = append(schemas, tt.schema())
	}
	for _, sc := range schemas {
		s.tables[sc.name] = newTable(sc)
	}
	if cfg.LegacyCloseCodes {
		f, _, _ := s.tables["incident"].s.field("close_code")
		f.setChoices(LegacyCloseCodes())
	}
	switch {
	case cfg.OffsetRowCost == 0:
		s.rowCost = 100 * time.Nanosecond
	case cfg.OffsetRowCost > 0:
		s.rowCost = cfg.OffsetRowCost
	}
	s.seedReference()
	s.seedDictionary()
	s.seedChoices()
	s.hooks = newDispatcher(s, cfg.Webhooks, cfg.WebhookOptions, cfg.WebhookClient)
	return s
}

// Close stops the business-rule workers; webhooks not yet sent are dropped.
func (s *Server) Close() { s.hooks.close() }

// AppUser is the OAuth application user's user name.
func (s *Server) AppUser() string { return s.cfg.AppUser }

// ClientID and ClientSecret are the OAuth credentials the simulator accepts.
func (s *Server) ClientID() string     { return s.cfg.ClientID }
func (s *Server) ClientSecret() string { return s.cfg.ClientSecret }

// randHex returns n random hex characters from the seeded generator.
func (s *Server) randHex(n int) string {
	s.knobMu.Lock()
	defer s.knobMu.Unlock()
	return randHexFrom(s.rng, n)
}

func randHexFrom(r *mrand.Rand, n int) string {
	b := make([]byte, (n+1)/2)
	for i := 0; i < len(b); i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], r.Uint64())
		copy(b[i:], w[:])
	}
	return hex.EncodeToString(b)[:n]
}

// chance draws from the seeded generator: true with probability p.
func (s *Server) chance(p float64) bool {
	if p <= 0 {
		return false
	}
	s.knobMu.Lock()
	defer s.knobMu.Unlock()
	return s.rng.Float64() < p
}

func (s *Server) nowStamp() string { return s.now().UTC().Format(snTimeLayout) }

// RequestKey identifies a counter of served requests: the method, the path
// with any sys_id replaced by {sys_id}, and the status (-1 for a connection
// dropped by the DropRate fault).
type RequestKey struct {
	Method string
	Path   string
	Status int
}

// RequestInfo is one served request, kept in a bounded log.
type RequestInfo struct {
	Method   string
	Path     string // as requested
	Query    string // raw query string
	Status   int
	Duration time.Duration
}

const maxRequestLog = 2000

// RequestCount counts served requests matching method, path (normalised,
// e.g. "/api/now/table/incident/{sys_id}") and status; empty or 0 matches any.
func (s *Server) RequestCount(method, path string, status int) int {
	s.knobMu.Lock()
	defer s.knobMu.Unlock()
	n := 0
	for k, v := range s.stats {
		if (method == "" || k.Method == method) && (path == "" || k.Path == path) && (status == 0 || k.Status == status) {
			n += v
		}
	}
	return n
}

// RequestStats returns a copy of every counter.
func (s *Server) RequestStats() map[RequestKey]int {
	s.knobMu.Lock()
	defer s.knobMu.Unlock()
	out := make(map[RequestKey]int, len(s.stats))
	for k, v := range s.stats {
		out[k] = v
	}
	return out
}

// Requests returns the most recent requests (up to 2000), oldest first.
func (s *Server) Requests() []RequestInfo {
	s.knobMu.Lock()
	defer s.knobMu.Unlock()
	return append([]RequestInfo(nil), s.reqLog...)
}

// ResetStats clears request counters, the request log, token counters and
// recorded query problems.
func (s *Server) ResetStats() {
	s.knobMu.Lock()
	defer s.knobMu.Unlock()
	s.stats = map[RequestKey]int{}
	s.reqLog = nil
	s.tokReq, s.tokIss = 0, 0
	s.qprobs = nil
}

// QueryProblem records a query the simulator did not run as written: a
// clause dropped because its field does not exist (Kind "dropped"), or
// syntax it does not implement (Kind "unsupported", answered with 400).
type QueryProblem struct {
	Kind   string
	Table  string
	Query  string
	Detail string
}

// QueryProblems returns every query problem since the last ResetStats.
func (s *Server) QueryProblems() []QueryProblem {
	s.knobMu.Lock()
	defer s.knobMu.Unlock()
	return append([]QueryProblem(nil), s.qprobs...)
}

func (s *Server) addQueryProblem(p QueryProblem) {
	s.knobMu.Lock()
	s.qprobs = append(s.qprobs, p)
	s.knobMu.Unlock()
}

// SetOffsetRowCost changes the simulated cost of each row skipped by
// sysparm_offset (0: only the real walk).
func (s *Server) SetOffsetRowCost(d time.Duration) {
	s.knobMu.Lock()
	s.rowCost = max(d, 0)
	s.knobMu.Unlock()
}

// SetInvalidQueryReturnsNoRows switches glide.invalid_query.returns_no_rows.
func (s *Server) SetInvalidQueryReturnsNoRows(on bool) {
	s.knobMu.Lock()
	s.noRows = on
	s.knobMu.Unlock()
}

// statusRecorder captures the status for counters.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ServeHTTP routes /oauth_token.do and the Table API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w}
	norm := normalisePath(r.URL.Path)
	dropped := s.serve(rec, r)
	status := rec.status
	if dropped {
		status = -1 // the connection was closed without an answer
	} else if status == 0 {
		status = http.StatusOK
	}
	s.knobMu.Lock()
	s.stats[RequestKey{Method: r.Method, Path: norm, Status: status}]++
	s.reqLog = append(s.reqLog, RequestInfo{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Status: status, Duration: time.Since(start)})
	if len(s.reqLog) > maxRequestLog {
		s.reqLog = append(s.reqLog[:0:0], s.reqLog[len(s.reqLog)-maxRequestLog/2:]...)
	}
	s.knobMu.Unlock()
	s.log.Debug("snsim request", "method", r.Method, "path", r.URL.Path, "status", status, "duration", time.Since(start))
}

// normalisePath replaces a sys_id segment so counters group by resource.
func normalisePath(p string) string {
	if ap, ok := parseAttachmentPath(p); ok && ap.sysID != "" {
		// /api/now/attachment/{sys_id}[/file]
		return strings.Replace(p, "/"+ap.sysID, "/{sys_id}", 1)
	}
	parts := strings.Split(p, "/")
	if len(parts) > 0 && len(parts[len(parts)-1]) == 32 && strings.Contains(p, "/table/") {
		n := len(parts)
		if (n == 6 && parts[3] == "table") || (n == 7 && parts[4] == "table") {
			parts[n-1] = "{sys_id}"
		}
	}
	return strings.Join(parts, "/")
}

// serve handles one request; it reports whether the connection was dropped.
func (s *Server) serve(w http.ResponseWriter, r *http.Request) bool {
	f := s.currentFaults()
	if f.Latency > 0 || f.LatencyJitter > 0 {
		d := f.Latency
		if f.LatencyJitter > 0 {
			s.knobMu.Lock()
			d += time.Duration(s.rng.Int64N(int64(f.LatencyJitter)))
			s.knobMu.Unlock()
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return true
		}
	}
	switch {
	case r.URL.Path == "/oauth_token.do":
		if s.chance(f.TokenErrorRate) {
			writeError(w, http.StatusServiceUnavailable, "Service Unavailable", "The instance is temporarily unable to serve requests")
			return false
		}
		s.handleToken(w, r)
		return false
	case isSelfTestRoute(r.URL.Path):
		s.handleSelfTestRoute(w, r)
		return false
	case strings.HasPrefix(r.URL.Path, "/api/now/"):
		if s.chance(f.DropRate) {
			return dropConnection(w)
		}
		if s.chance(f.ErrorRate) {
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusServiceUnavailable, "Service Unavailable", "The instance is temporarily unable to serve requests")
			return false
		}
		if s.chance(f.SemaphoreRate) {
			// The facts fix the status and the missing rate-limit headers;
			// the wording is the simulator's.
			writeError(w, http.StatusTooManyRequests, "Too Many Requests", "API semaphores exhausted: too many concurrent requests")
			return false
		}
		if s.chance(f.CancelRate) {
			writeError(w, http.StatusServiceUnavailable, "Transaction cancelled", "Transaction cancelled: maximum execution time exceeded")
			return false
		}
		s.handleAPI(w, r)
		return false
	}
	writeError(w, http.StatusBadRequest, "Requested URI does not represent any resource", "")
	return false
}

// dropConnection closes the TCP connection without answering, as a load
// balancer dropping the request does.
func dropConnection(w http.ResponseWriter) bool {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// HTTP/2 and recorders cannot be hijacked: the nearest thing is a
		// gateway error without a body.
		w.WriteHeader(http.StatusBadGateway)
		return false
	}
	_ = conn.Close()
	return true
}

// readBody reads a request body up to 10 MiB.
func readBody(r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r.Body, 10<<20+1))
	if err != nil {
		return nil, fmt.Errorf("read request body: %w", err)
	}
	if len(b) > 10<<20 {
		return nil, errors.New("request body over 10 MiB")
	}
	return b, nil
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
