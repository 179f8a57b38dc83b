package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

type simFlags struct {
	listen, clientID, clientSecret, appUser, instance string
	seed                                              int
	webhookURLs                                       []string
	webhookSecret, skipUser                           string
	dropRate                                          float64
	webhookDelay                                      time.Duration
	rateLimit, burst                                  int
	latency, jitter, tokenTTL, offsetRowCost          time.Duration
	errorRate, cancelRate, dropConnRate, tokenErrRate float64
	semaphoreRate                                     float64
	aclMode, oauthMode                                string
	hideFraction                                      float64
	invalidNoRows                                     bool
	grantDictionary, grantAuditDelete                 bool
	grantHRRole                                       string
	tables                                            []string
	legacyCloseCodes                                  bool
	rngSeed                                           uint64
	logFormat                                         string
}

func newSimCmd(a *app) *cobra.Command {
	var f simFlags
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Run the ServiceNow instance simulator alone (OAuth, Table API, business-rule webhooks, faults)",
		Long: `Run a simulated ServiceNow instance: OAuth client credentials at /oauth_token.do, the Table API
(the ticket tables incident, change_request, problem, sc_req_item and sn_hr_core_case, and
sys_journal_field, sys_choice, sys_audit_delete, sys_dictionary, sys_user, sys_user_group) and business
rules that POST signed webhooks to --webhook-url for the tables in --tables (nowbridge.tables). Point the
bridge's BRIDGE_SN_INSTANCE_URL at it. --seed N fills the --tables with N records in all, spread evenly.

The OAuth application user has exactly what snc_platform_rest_api_access + itil give on a real instance:
sys_dictionary, sys_audit_delete and sn_hr_core_case answer 200 with no rows (X-Total-Count still counts
them). --grant-dictionary, --grant-audit-delete and --grant-hr-role grant them as an admin would;
--acl-mode no-roles takes itil away. Incident close codes are the current release's, served from
sys_choice (--legacy-close-codes: the older release's); a close_code that is not an active choice is
dropped, and closing any table without what its data policy needs is refused with 403.

Credentials default to BRIDGE_SN_CLIENT_ID / BRIDGE_SN_CLIENT_SECRET and the webhook secret to the first
of BRIDGE_WEBHOOK_SECRETS; a missing client secret or webhook secret is generated and printed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSim(cmd.Context(), a, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", "127.0.0.1:8081", "address to listen on")
	fl.StringVar(&f.clientID, "client-id", "", "OAuth client id (default $BRIDGE_SN_CLIENT_ID, else nowbridge)")
	fl.StringVar(&f.clientSecret, "client-secret", "", "OAuth client secret (default $BRIDGE_SN_CLIENT_SECRET, else generated)")
	fl.StringVar(&f.appUser, "app-user", snsim.DefaultAppUser, "OAuth application user: sys_updated_by of API writes")
	fl.StringVar(&f.instance, "instance", "dev00000", "instance name sent in webhooks")
	fl.IntVar(&f.seed, "seed", 0, "fill the --tables with N records in all, spread evenly (about 50 per sys_updated_on second)")
	fl.StringSliceVar(&f.tables, "tables", []string{"incident"}, "ticket tables seeded and sending webhooks (nowbridge.tables): "+strings.Join(snsim.TicketTables(), ", "))
	fl.StringSliceVar(&f.webhookURLs, "webhook-url", nil, "business-rule webhook endpoint, e.g. http://127.0.0.1:8080/webhooks/servicenow (repeatable)")
	fl.StringVar(&f.webhookSecret, "webhook-secret", "", "whsec_... secrets signing webhooks, comma-separated (default first of $BRIDGE_WEBHOOK_SECRETS, else generated)")
	fl.Float64Var(&f.dropRate, "drop-rate", 0, "share of webhooks never sent, 0..1 (exercises reconcile)")
	fl.DurationVar(&f.webhookDelay, "webhook-delay", 0, "delay before each webhook is sent")
	fl.StringVar(&f.skipUser, "skip-user", "", "send no webhook for changes by this user name (loop guard)")
	fl.IntVar(&f.rateLimit, "rate-limit", 0, "Table API requests per hour per user (a sys_rate_limit_rules rule for all users); 0 = none")
	fl.IntVar(&f.burst, "burst", 0, "Table API requests per second per user; 0 = unlimited")
	fl.DurationVar(&f.latency, "latency", 0, "latency added to every request")
	fl.DurationVar(&f.jitter, "latency-jitter", 0, "random extra latency up to this")
	fl.Float64Var(&f.errorRate, "error-rate", 0, "share of Table API requests answered 503, 0..1")
	fl.Float64Var(&f.cancelRate, "cancel-rate", 0, "share of Table API requests answered 503 Transaction cancelled, 0..1")
	fl.Float64Var(&f.dropConnRate, "drop-conn-rate", 0, "share of Table API connections closed without an answer, 0..1")
	fl.Float64Var(&f.semaphoreRate, "semaphore-rate", 0, "share of Table API requests answered 429 without rate-limit headers (API semaphores exhausted), 0..1")
	fl.Float64Var(&f.tokenErrRate, "token-error-rate", 0, "share of token requests answered 503, 0..1")
	fl.StringVar(&f.aclMode, "acl-mode", "none", "none | rows (hide --hide-fraction of rows after the limit) | no-roles (no itil: incident answers 200 with [], writes 403) | deny-writes (403)")
	fl.Float64Var(&f.hideFraction, "hide-fraction", 0.25, "share of rows hidden in --acl-mode rows")
	fl.StringVar(&f.oauthMode, "oauth-mode", "ok", "ok | grant-disabled | no-app-user | token-not-authenticated")
	fl.DurationVar(&f.tokenTTL, "token-ttl", 1799*time.Second, "expires_in of issued tokens")
	fl.DurationVar(&f.offsetRowCost, "offset-row-cost", 100*time.Nanosecond, "simulated cost of each row skipped by sysparm_offset (0 = only the real walk)")
	fl.BoolVar(&f.grantDictionary, "grant-dictionary", false, "let the application user read sys_dictionary (as the admin or personalize_dictionary role does)")
	fl.BoolVar(&f.grantAuditDelete, "grant-audit-delete", false, "let the application user read sys_audit_delete (as an admin-granted ACL does)")
	fl.StringVar(&f.grantHRRole, "grant-hr-role", "", "give the application user an HR scope role: "+snsim.RoleHRCaseReader+" reads sn_hr_core_case, "+
		snsim.RoleHRCaseWriter+" or "+snsim.RoleHRAdmin+" also writes it (default: none, HR cases are hidden)")
	fl.BoolVar(&f.legacyCloseCodes, "legacy-close-codes", false, "serve incident close_code choices of older releases (Solved (Permanently), ...) instead of the current ones (Solution provided, ...)")
	fl.BoolVar(&f.invalidNoRows, "invalid-query-no-rows", false, "glide.invalid_query.returns_no_rows: a clause on an unknown field returns no rows")
	fl.Uint64Var(&f.rngSeed, "rng-seed", 0, "seed for generated ids and fault draws (0 = random)")
	fl.StringVar(&f.logFormat, "log-format", "text", "json or text")
	return cmd
}

func runSim(ctx context.Context, a *app, f simFlags) error {
	cfg, opts, err := simConfig(a, &f)
	if err != nil {
		return err
	}
	var h slog.Handler = slog.NewTextHandler(a.stderr, nil)
	if f.logFormat == "json" {
		h = slog.NewJSONHandler(a.stderr, nil)
	}
	cfg.Logger = slog.New(h)
	sim := snsim.New(cfg)
	defer sim.Close()
	if err := opts(sim); err != nil {
		return usageError{err}
	}
	if err := seedTables(sim, f.tables, f.seed, cfg.Logger); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("sim: listen on %s: %w (is another process using it? pick another with --listen)", f.listen, err)
	}
	srv := &http.Server{Handler: sim, ReadHeaderTimeout: 10 * time.Second}
	url := "http://" + ln.Addr().String()
	fmt.Fprintf(a.stdout, "ServiceNow simulator listening on %s\n", url)
	fmt.Fprintf(a.stdout, "  BRIDGE_SN_INSTANCE_URL=%s\n", url)
	fmt.Fprintf(a.stdout, "  BRIDGE_SN_CLIENT_ID=%s\n", cfg.ClientID)
	fmt.Fprintf(a.stdout, "  BRIDGE_SN_CLIENT_SECRET=%s\n", cfg.ClientSecret)
	counts := make([]string, 0, len(f.tables))
	for _, t := range f.tables {
		counts = append(counts, fmt.Sprintf("%s %d", t, sim.Count(t)))
	}
	fmt.Fprintf(a.stdout, "  application user: %s; records: %s\n", cfg.AppUser, strings.Join(counts, ", "))
	fmt.Fprintf(a.stdout, "  BRIDGE_TABLES=%s\n", strings.Join(f.tables, ","))
	for _, w := range cfg.Webhooks {
		fmt.Fprintf(a.stdout, "  business rules POST to %s\n", w.URL)
	}
	if len(cfg.Webhooks) > 0 {
		fmt.Fprintf(a.stdout, "  BRIDGE_WEBHOOK_SECRETS=%s\n", cfg.Webhooks[0].Secrets[0].Encoded())
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("sim: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("sim: shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("sim: serve: %w", err)
	}
	fmt.Fprintln(a.stdout, "ServiceNow simulator stopped")
	return nil
}

// simConfig turns flags into the simulator's config and the knobs to set
// once it exists; bad values are usage errors.
func simConfig(a *app, f *simFlags) (snsim.Config, func(*snsim.Server) error, error) {
	fail := func(err error) (snsim.Config, func(*snsim.Server) error, error) {
		return snsim.Config{}, nil, usageError{err}
	}
	simCredentials(a, f)
	if err := checkSimFlags(f); err != nil {
		return fail(err)
	}
	tables, err := simTables(f.tables)
	if err != nil {
		return fail(err)
	}
	f.tables = tables
	fields := map[string][]string{}
	for _, t := range tables {
		fields[t] = snsim.DefaultWebhookFields[t]
	}
	cfg := snsim.Config{
		ClientID: f.clientID, ClientSecret: f.clientSecret, AppUser: f.appUser, TokenTTL: f.tokenTTL,
		InstanceName: f.instance, Seed: f.rngSeed, InvalidQueryReturnsNoRows: f.invalidNoRows,
		Grants:           snsim.Grants{Dictionary: f.grantDictionary, AuditDelete: f.grantAuditDelete, HRRole: f.grantHRRole},
		LegacyCloseCodes: f.legacyCloseCodes,
		WebhookOptions:   snsim.WebhookOptions{DropRate: f.dropRate, Delay: f.webhookDelay, SkipUser: f.skipUser, Fields: fields},
	}
	if cfg.Webhooks, err = simWebhooks(a, f); err != nil {
		return fail(err)
	}
	mode, acl, err := simModes(f)
	if err != nil {
		return fail(err)
	}
	if err := cfg.Validate(); err != nil {
		return fail(err)
	}
	return cfg, simKnobs(f, mode, acl), nil
}

// simCredentials fills in the OAuth client: the flags, else the bridge's
// settings, else the id nowbridge and a random secret.
func simCredentials(a *app, f *simFlags) {
	f.clientID = firstNonEmpty(f.clientID, a.getenv("BRIDGE_SN_CLIENT_ID"), "nowbridge")
	if f.clientSecret == "" {
		f.clientSecret = a.getenv("BRIDGE_SN_CLIENT_SECRET")
	}
	if f.clientSecret == "" {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		f.clientSecret = hex.EncodeToString(b)
	}
}

// checkSimFlags checks the numbers and the log format.
func checkSimFlags(f *simFlags) error {
	if f.seed < 0 {
		return fmt.Errorf("--seed must not be negative, got %d", f.seed)
	}
	for _, r := range []struct {
		name string
		v    float64
	}{{"--drop-rate", f.dropRate}, {"--error-rate", f.errorRate}, {"--cancel-rate", f.cancelRate}, {"--drop-conn-rate", f.dropConnRate},
		{"--semaphore-rate", f.semaphoreRate}, {"--token-error-rate", f.tokenErrRate}, {"--hide-fraction", f.hideFraction}} {
		if r.v < 0 || r.v > 1 {
			return fmt.Errorf("%s must be between 0 and 1, got %g", r.name, r.v)
		}
	}
	if f.logFormat != "json" && f.logFormat != "text" {
		return fmt.Errorf("--log-format must be json or text, got %q", f.logFormat)
	}
	return nil
}

// simWebhooks are the business rules' targets: every --webhook-url, signed
// with --webhook-secret, else the bridge's first BRIDGE_WEBHOOK_SECRETS,
// else a random key.
func simWebhooks(a *app, f *simFlags) ([]snsim.WebhookTarget, error) {
	if len(f.webhookURLs) == 0 {
		return nil, nil
	}
	secret := f.webhookSecret
	if secret == "" {
		secret, _, _ = strings.Cut(a.getenv("BRIDGE_WEBHOOK_SECRETS"), ",")
	}
	var secrets []webhook.Secret
	if strings.TrimSpace(secret) == "" {
		key := make([]byte, 32)
		_, _ = rand.Read(key)
		secrets = []webhook.Secret{webhook.NewSecret(key)}
	} else {
		var err error
		if secrets, err = webhook.ParseSecrets(secret); err != nil {
			return nil, fmt.Errorf("--webhook-secret: %v", err)
		}
	}
	var targets []snsim.WebhookTarget
	for _, u := range f.webhookURLs {
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			return nil, fmt.Errorf("--webhook-url %q must be an http(s) URL", u)
		}
		targets = append(targets, snsim.WebhookTarget{URL: u, Secrets: secrets})
	}
	return targets, nil
}

// simModes reads --oauth-mode and --acl-mode.
func simModes(f *simFlags) (snsim.OAuthMode, snsim.ACL, error) {
	var mode snsim.OAuthMode
	switch f.oauthMode {
	case "ok":
	case "grant-disabled":
		mode = snsim.OAuthGrantDisabled
	case "no-app-user":
		mode = snsim.OAuthNoAppUser
	case "token-not-authenticated":
		mode = snsim.OAuthTokenNotAuthenticated
	default:
		return mode, snsim.ACL{}, fmt.Errorf("--oauth-mode must be ok, grant-disabled, no-app-user or token-not-authenticated, got %q", f.oauthMode)
	}
	var acl snsim.ACL
	switch f.aclMode {
	case "none":
	case "rows":
		acl.HideRow = snsim.HideFraction(f.hideFraction)
	case "no-roles":
		acl.NoRoles = true
	case "deny-writes":
		acl.DenyWrites = true
	default:
		return mode, acl, fmt.Errorf("--acl-mode must be none, rows, no-roles or deny-writes, got %q", f.aclMode)
	}
	return mode, acl, nil
}

// simKnobs sets what the simulator takes after it exists: the OAuth and
// ACL modes, the rate limits and the faults.
func simKnobs(f *simFlags, mode snsim.OAuthMode, acl snsim.ACL) func(*snsim.Server) error {
	return func(s *snsim.Server) error {
		s.SetOAuthMode(mode)
		s.SetACL(acl)
		s.SetBurstLimit(f.burst)
		s.SetOffsetRowCost(f.offsetRowCost)
		if f.rateLimit > 0 {
			if err := s.SetRateLimitRules([]snsim.RateLimitRule{{Count: f.rateLimit}}); err != nil {
				return err
			}
		}
		return s.SetFaults(snsim.Faults{Latency: f.latency, LatencyJitter: f.jitter, ErrorRate: f.errorRate,
			CancelRate: f.cancelRate, DropRate: f.dropConnRate, SemaphoreRate: f.semaphoreRate, TokenErrorRate: f.tokenErrRate})
	}
}

// simTables checks --tables against the simulated ticket tables: trimmed,
// without repeats, at least one.
func simTables(list []string) ([]string, error) {
	var out []string
	for _, t := range list {
		t = strings.TrimSpace(t)
		if t == "" || slices.Contains(out, t) {
			continue
		}
		if !slices.Contains(snsim.TicketTables(), t) {
			return nil, fmt.Errorf("--tables: %q is not a simulated table; choose from %s", t, strings.Join(snsim.TicketTables(), ", "))
		}
		out = append(out, t)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--tables is empty; name at least one of %s", strings.Join(snsim.TicketTables(), ", "))
	}
	return out, nil
}

// seedTables spreads n records over the tables: each gets n/len(tables),
// the first ones one more until n is used up.
func seedTables(sim *snsim.Server, tables []string, n int, log *slog.Logger) error {
	if n <= 0 {
		return nil
	}
	start := time.Now()
	for i, t := range tables {
		share := n / len(tables)
		if i < n%len(tables) {
			share++
		}
		if err := sim.SeedTable(t, share, snsim.SeedOptions{}); err != nil {
			return fmt.Errorf("sim: seed %s: %w", t, err)
		}
	}
	log.Info("seeded records", "count", n, "tables", strings.Join(tables, ","), "took", time.Since(start).Round(time.Millisecond))
	return nil
}
