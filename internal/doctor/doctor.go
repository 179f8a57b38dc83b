// Package doctor checks a ServiceNow instance's integration setup for the
// bridge and says what to fix: OAuth, roles and ACLs, mapped fields, writes,
// clock skew, rate limits and the bridge's own webhook endpoint. `bridge
// doctor` is a thin command over Run; the checks talk to ServiceNow only
// through snclient, so they see the instance exactly as the bridge does.
package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// Status is a check's outcome.
type Status string

// Outcomes. Only Fail makes the doctor exit 1.
const (
	Pass Status = "pass"
	Fail Status = "fail"
	// Warn: the bridge works, with a consequence worth knowing (e.g. deletes
	// found by the slower presence scan); Fix says what a grant would add.
	Warn Status = "warn"
	Skip Status = "skip" // not run: disabled, or an earlier check failed
)

// Check is one line of the checklist.
type Check struct {
	ID     string `json:"id"` // stable: token, auth, dictionary, table:<t>, fields:<t>, scan:<t>, close_code:<t>, audit_delete:<t>, write_probe:<t>, clock, rate_limit, webhook
	Title  string `json:"title"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"` // what to do, for a failed check
}

// Report is the whole checklist.
type Report struct {
	Instance string  `json:"instance"`
	OK       bool    `json:"ok"`
	Checks   []Check `json:"checks"`
}

// Options configures a run. InstanceURL, ClientID, ClientSecret and Tables
// are required.
type Options struct {
	InstanceURL  string
	ClientID     string
	ClientSecret snclient.Secret
	Tables       []string
	// Fields lists, per table, the ServiceNow fields the bridge's mapping
	// reads or writes; a table without an entry skips the fields check.
	Fields map[string][]string
	// Close is, per table, the mapping's closing rule; a table with one gets
	// a close-code check. CloseCode is BRIDGE_CLOSE_CODE ("" chooses from
	// the instance's choices, as the writeback does).
	Close     map[string]*mapping.Close
	CloseCode string
	// WriteProbe creates, updates and deletes a marked record per table.
	WriteProbe bool
	// WebhookURL is the bridge's receiver (…/webhooks/servicenow); empty
	// skips the webhook check. WebhookSecrets are BRIDGE_WEBHOOK_SECRETS.
	WebhookURL     string
	WebhookSecrets []webhook.Secret
	// InstanceSelfTest makes the instance sign and send a test webhook to
	// the bridge (selftest.go); SelfTestPath is the resource's path when
	// it is not found by itself (BRIDGE_SN_SELFTEST_PATH).
	InstanceSelfTest bool
	SelfTestPath     string

	// HTTPClient sends every request (default: 15 s timeout).
	HTTPClient *http.Client
	// Now is the local clock the instance's Date header is compared with.
	Now func() time.Time
	// MaxClockSkew fails the clock check above it (default 60 s; webhooks
	// are rejected beyond BRIDGE_WEBHOOK_TOLERANCE, 5 minutes by default).
	MaxClockSkew time.Duration
	// RetryMaxElapsed bounds snclient's retries per call (default 5 s), so
	// a rate-limited or failing instance answers the doctor quickly.
	RetryMaxElapsed time.Duration
	Logger          *slog.Logger
}

// probeTable is the webhook probe's table: well-formed, and not one a bridge
// syncs, so a receiver that verifies the signature answers 422 and stores
// nothing.
const probeTable = "nowbridge_doctor_probe"

// Fixes. Tests and docs match on them.
const (
	FixToken = "check BRIDGE_SN_CLIENT_ID/BRIDGE_SN_CLIENT_SECRET against the OAuth application (Application Registry; " +
		"Zurich and later: Machine Identity Console > Inbound integrations), set the system property " +
		"glide.oauth.inbound.client.credential.grant_type.enabled = true, and set the OAuth Application User " +
		"on the application: ServiceNow answers the same 401 access_denied for all three"
	FixAppUser = "the token is issued but every API call answers 401: set the OAuth Application User on the OAuth " +
		"application (add the field to the form if it is not shown), and make sure that user is active, not locked out"
	FixRoles = "grant the OAuth Application User snc_platform_rest_api_access and itil (incident, problem, change, requested items); " +
		"sn_hr_core.case_writer only for HR cases; nothing more"
	FixNoRole = "every counted row is hidden: the OAuth Application User has no role that may read the table (ServiceNow " +
		"answers 200 with no rows, not 403): " + FixRoles
	FixCloseCode = "set BRIDGE_CLOSE_CODE to one of the instance's active choices, or leave it empty so the bridge picks one " +
		"(Solution provided first); a value that is not an active choice is dropped silently and the data policy refuses the resolve"
	FixChoices = "the OAuth Application User cannot read sys_choice (itil can): grant itil, or set BRIDGE_CLOSE_CODE to a " +
		"code you know is active"
	FixAuditDelete = "optional: grant the OAuth Application User read on sys_audit_delete (a read ACL for a role of its own) " +
		"for a fast delete scan; without it reconcile finds deletes by presence every BRIDGE_DELETE_SCAN_INTERVAL (24h)"
	FixScanQuery = "reconcile's keyset query (ORDERBYsys_updated_on^ORDERBYsys_id) was refused: a field ACL hides " +
		"sys_updated_on, sys_id or sys_mod_count from the OAuth Application User; grant read on them"
	FixEmpty = "no row is visible: either the table is empty (create one record and run the doctor again) or the " +
		"OAuth Application User cannot read it (ServiceNow answers an empty list, not 403): " + FixRoles
	FixRowACL = "X-Total-Count counts rows the user cannot see: row-level ACLs (or a query business rule) hide them " +
		"from the OAuth Application User; grant the role the table's read ACL requires"
	FixTable     = "the table does not exist on this instance, or the user cannot see it: check BRIDGE_TABLES"
	FixFieldName = "the field does not exist on this table: fix the name in the mapping (BRIDGE_MAPPING_DIR), or create " +
		"the field (a u_ field is a custom column that must exist on this instance)"
	FixFieldACL = "a field-level read ACL (table.field) hides these fields from the OAuth Application User: grant " +
		"the role it requires; ServiceNow omits unreadable fields without an error"
	FixFieldEither = "a field missing from the answer either does not exist (fix the mapping or create the field, e.g. " +
		"a u_ field) or a field ACL hides it (grant the role it requires); grant read on sys_dictionary to tell which"
	FixWrite = "the OAuth Application User cannot write this table: grant itil (create/write on incident); a data " +
		"policy or a mandatory field can also refuse a write (see the detail)"
	FixClock = "synchronise the clocks (NTP) of the bridge host; the instance's clock is ServiceNow's. Webhooks " +
		"signed more than BRIDGE_WEBHOOK_TOLERANCE (default 5m) away from the bridge's clock are rejected"
	FixRateLimited = "a rate limit rule (System Web Services > REST > Rate Limit Rules, sys_rate_limit_rules) is " +
		"exhausted for this user: raise it, or set BRIDGE_SN_RATE_LIMIT below the rule's hourly count / 3600"
	FixWebhookSecret = "set BRIDGE_WEBHOOK_SECRETS (whsec_<base64>, the first signs, all verify) and put the same " +
		"value in ServiceNow's system property nowbridge.webhook_secret"
	FixWebhookUnreachable = "start the bridge (bridge serve) or fix --webhook-url; ServiceNow must reach the same URL " +
		"(its nowbridge.webhook_url property): open the firewall for the instance's outbound addresses"
	FixWebhookMismatch = "the receiver rejects our signature: the secrets given to the doctor are not the ones the " +
		"bridge at this URL uses, or the clocks differ by more than its tolerance; give both the same " +
		"BRIDGE_WEBHOOK_SECRETS and put one of them in nowbridge.webhook_secret"
	FixWebhookPath = "this URL is not the bridge's receiver: it must end in /webhooks/servicenow"
	FixWebhookOpen = "the endpoint accepted an unsigned request: this is not the nowbridge receiver (or a proxy " +
		"answers for it); point --webhook-url and nowbridge.webhook_url at the bridge"
)

// Run runs every check and returns the report; it never returns early on
// a failed check, so one run shows everything to fix.
func Run(ctx context.Context, opt Options) Report {
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.MaxClockSkew <= 0 {
		opt.MaxClockSkew = time.Minute
	}
	if opt.RetryMaxElapsed <= 0 {
		opt.RetryMaxElapsed = 5 * time.Second
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	base := opt.HTTPClient
	if base == nil {
		base = &http.Client{Timeout: 15 * time.Second, Transport: http.DefaultTransport.(*http.Transport).Clone()}
		defer base.CloseIdleConnections()
	}
	rec := &recorder{now: opt.Now, next: base.Transport}
	if rec.next == nil {
		rec.next = http.DefaultTransport
	}
	hc := *base
	hc.Transport = rec

	d := &run{opt: opt, rec: rec, http: &hc}
	d.serviceNow(ctx)
	d.clock()
	d.rateLimit()
	d.webhook(ctx, base)

	r := Report{Instance: opt.InstanceURL, OK: true, Checks: d.checks}
	for _, c := range r.Checks {
		if c.Status == Fail {
			r.OK = false
		}
	}
	return r
}

type run struct {
	opt          Options
	rec          *recorder
	http         *http.Client
	checks       []Check
	dictReadable bool
}

var errDictionaryHidden = errors.New("sys_dictionary is not readable")

func (d *run) add(c Check) { d.checks = append(d.checks, c) }

func (d *run) serviceNow(ctx context.Context) {
	sn, err := snclient.New(snclient.Config{
		InstanceURL:              d.opt.InstanceURL,
		ClientID:                 d.opt.ClientID,
		ClientSecret:             d.opt.ClientSecret,
		HTTPClient:               d.http,
		RequestTimeout:           15 * time.Second,
		RetryInitial:             200 * time.Millisecond,
		RetryMax:                 2 * time.Second,
		RetryMaxElapsed:          d.opt.RetryMaxElapsed,
		BreakerFailures:          1000, // the doctor wants every answer, not a tripped breaker
		DisableBackgroundRefresh: true,
		SkipFieldValidation:      true, // the fields check reads the dictionary itself
		Logger:                   d.opt.Logger,
	})
	if err != nil {
		d.add(Check{ID: "token", Title: "OAuth token exchange", Status: Fail, Detail: err.Error(),
			Fix: "fix BRIDGE_SN_INSTANCE_URL, BRIDGE_SN_CLIENT_ID and BRIDGE_SN_CLIENT_SECRET"})
		d.skipServiceNow("no usable client configuration")
		return
	}
	defer func() { _ = sn.Close() }()

	if !d.token(ctx, sn) {
		d.skipServiceNow("needs a token")
		return
	}
	if !d.auth(ctx, sn) {
		d.skipServiceNow("needs an authenticated API call")
		return
	}
	d.dictionary(ctx, sn)
	for _, t := range d.opt.Tables {
		readable := d.table(ctx, sn, t)
		d.fields(ctx, sn, t, readable)
		d.scan(ctx, sn, t)
		d.closeCode(ctx, sn, t)
		d.auditDelete(ctx, sn, t)
	}
	for _, t := range d.opt.Tables {
		d.writeProbe(ctx, sn, t)
	}
	d.instanceSelfTest(ctx, sn)
}

func (d *run) skipServiceNow(why string) {
	if len(d.checks) == 0 || d.checks[0].ID != "token" {
		d.add(Check{ID: "token", Title: "OAuth token exchange", Status: Skip, Detail: why})
	}
	if !slices.ContainsFunc(d.checks, func(c Check) bool { return c.ID == "auth" }) {
		d.add(Check{ID: "auth", Title: "Authenticated Table API read", Status: Skip, Detail: why})
	}
	d.add(Check{ID: "dictionary", Title: "sys_dictionary", Status: Skip, Detail: why})
	for _, t := range d.opt.Tables {
		d.add(Check{ID: "table:" + t, Title: "Read " + t, Status: Skip, Detail: why})
		d.add(Check{ID: "fields:" + t, Title: "Mapped fields of " + t, Status: Skip, Detail: why})
		d.add(Check{ID: "scan:" + t, Title: "Reconcile scan of " + t, Status: Skip, Detail: why})
		if d.opt.Close[t] != nil {
			d.add(Check{ID: "close_code:" + t, Title: "Close code of " + t, Status: Skip, Detail: why})
		}
		d.add(Check{ID: "audit_delete:" + t, Title: "sys_audit_delete for " + t, Status: Skip, Detail: why})
	}
	for _, t := range d.opt.Tables {
		d.add(d.skippedProbe(t, why))
	}
	d.add(d.skippedSelfTest(why))
}

func (d *run) skippedProbe(table, why string) Check {
	if !d.opt.WriteProbe {
		why = "pass --write-probe to create, update and delete a marked record"
	}
	return Check{ID: "write_probe:" + table, Title: "Write probe on " + table, Status: Skip, Detail: why}
}

func (d *run) token(ctx context.Context, sn *snclient.Client) bool {
	c := Check{ID: "token", Title: "OAuth token exchange (client credentials)"}
	err := sn.CheckAuth(ctx)
	if err == nil {
		st := sn.TokenStatus()
		c.Status = Pass
		c.Detail = "token issued, valid for " + st.Expiry.Sub(st.Issued).Round(time.Second).String()
		d.add(c)
		return true
	}
	c.Status = Fail
	var te *snclient.TokenError
	switch {
	case errors.As(err, &te) && te.Status == 401:
		c.Detail = fmt.Sprintf("POST /oauth_token.do answered 401 %s/%s", te.Code, te.Description)
		c.Fix = FixToken
	case errors.As(err, &te) && te.Hint == snclient.HintTokenEndpoint:
		c.Detail = trim(err.Error())
		c.Fix = snclient.HintTokenEndpoint
	case errors.As(err, &te) && te.Status == 0:
		c.Detail = "cannot reach the instance: " + trim(err.Error())
		c.Fix = "check BRIDGE_SN_INSTANCE_URL (https://<instance>.service-now.com) and the network path to it"
	default:
		c.Detail = trim(err.Error())
		c.Fix = orHint(err, FixToken)
	}
	d.add(c)
	return false
}

func (d *run) auth(ctx context.Context, sn *snclient.Client) bool {
	c := Check{ID: "auth", Title: "Authenticated Table API read"}
	table := d.opt.Tables[0]
	_, err := sn.List(ctx, table, snclient.ListOptions{Limit: 1, Fields: []string{"sys_id"}, NoCount: true})
	switch {
	case err == nil:
		c.Status, c.Detail = Pass, "GET /api/now/table/"+table+" accepted the token"
	case errors.Is(err, snclient.ErrUnauthorized):
		c.Status, c.Detail, c.Fix = Fail, "the token was issued, then GET /api/now/table/"+table+" answered 401 "+apiMessage(err), FixAppUser
	default:
		// Authenticated; what the user may read is the next checks' job.
		c.Status, c.Detail = Pass, "authenticated (the read itself failed: "+statusText(err)+"; see below)"
	}
	d.add(c)
	return c.Status == Pass
}

// table reads one row with its count; it reports whether a row came back.
func (d *run) table(ctx context.Context, sn *snclient.Client, table string) bool {
	c := Check{ID: "table:" + table, Title: "Read " + table + " (sysparm_limit=1, X-Total-Count)"}
	page, err := sn.List(ctx, table, snclient.ListOptions{Limit: 1})
	if err != nil {
		c.Status, c.Detail, c.Fix = Fail, trim(err.Error()), readFix(err, FixRoles)
		d.add(c)
		return false
	}
	rows := len(page.Records)
	if rows == 0 && page.Total > 0 {
		// Row ACLs apply after the limit: one hidden first row says little.
		// A larger page tells a missing role (nothing readable) from row
		// ACLs (some rows readable).
		if wide, err := sn.List(ctx, table, snclient.ListOptions{Limit: min(page.Total, hiddenProbeRows), Fields: []string{"sys_id", "number"}}); err == nil && len(wide.Records) > 0 {
			c.Status, c.Fix = Warn, FixRowACL
			c.Detail = fmt.Sprintf("%d of the first %d counted rows are readable (X-Total-Count %d): row ACLs hide the rest; hidden records do not sync",
				len(wide.Records), min(page.Total, hiddenProbeRows), page.Total)
			d.add(c)
			return true
		}
	}
	switch {
	case rows > 0:
		c.Status = Pass
		c.Detail = fmt.Sprintf("%s rows readable; first %s", countText(page.Total), recordName(page.Records[0]))
	case page.Total > 0:
		c.Status, c.Fix = Fail, FixNoRole
		c.Detail = fmt.Sprintf("X-Total-Count is %d but none of the first %d rows came back", page.Total, min(page.Total, hiddenProbeRows))
	default:
		c.Status, c.Fix = Fail, FixEmpty
		c.Detail = "0 rows (X-Total-Count " + countText(page.Total) + ")"
	}
	d.add(c)
	return rows > 0
}

// hiddenProbeRows is how many rows the table check reads to tell a missing
// role from row ACLs when the first row is hidden.
const hiddenProbeRows = 100

// dictionary reports whether sys_dictionary is readable. It is not needed
// (the bridge learns fields from records and the mapping), so both answers
// pass; readable only adds a way to tell a missing field from a hidden one.
func (d *run) dictionary(ctx context.Context, sn *snclient.Client) {
	c := Check{ID: "dictionary", Title: "sys_dictionary (optional)", Status: Pass}
	table := d.opt.Tables[0]
	page, err := sn.List(ctx, "sys_dictionary", snclient.ListOptions{Query: snclient.And(snclient.Field("name").EQ(table)), Fields: []string{"element"}, Limit: 1})
	switch {
	case err != nil:
		c.Detail = "not readable (" + statusText(err) + "): not needed; the bridge learns fields from records and the mapping (BRIDGE_SN_KNOWN_FIELDS adds more)"
	case len(page.Records) > 0:
		d.dictReadable = true
		c.Detail = "readable: field names are also checked against it"
	case page.Total > 0:
		c.Detail = fmt.Sprintf("hidden from the integration user (X-Total-Count %d, no rows), as with the documented roles: not needed; the bridge learns fields from records and the mapping (BRIDGE_SN_KNOWN_FIELDS adds more)", page.Total)
	default:
		c.Detail = "no rows: not needed; the bridge learns fields from records and the mapping"
	}
	d.add(c)
}

// scan runs one page of the keyset query reconcile runs (fields and order).
func (d *run) scan(ctx context.Context, sn *snclient.Client, table string) {
	c := Check{ID: "scan:" + table, Title: "Reconcile scan of " + table + " (ORDERBYsys_updated_on^ORDERBYsys_id)"}
	since := d.opt.Now().UTC().Add(-24 * time.Hour).Format(events.SNTimeLayout)
	q := snclient.And(snclient.Field("sys_updated_on").GTE(since)).OrderBy("sys_updated_on").OrderBy("sys_id")
	_, err := sn.List(ctx, table, snclient.ListOptions{Query: q, Fields: []string{"sys_id", "sys_mod_count", "sys_updated_on"}, Limit: 1})
	if err != nil {
		c.Status, c.Detail, c.Fix = Fail, trim(err.Error()), readFix(err, FixScanQuery)
		if errors.Is(err, snclient.ErrForbidden) {
			c.Fix = FixScanQuery
		}
	} else {
		c.Status, c.Detail = Pass, "keyset query on (sys_updated_on, sys_id) accepted"
	}
	d.add(c)
}

// closeCode checks the close code resolving writes will send, as the
// writeback picks it (mapping.Close.Pick over the instance's choices).
func (d *run) closeCode(ctx context.Context, sn *snclient.Client, table string) {
	rule := d.opt.Close[table]
	if rule == nil {
		return
	}
	c := Check{ID: "close_code:" + table, Title: "Close code of " + table + " (" + rule.CodeField + " choices in sys_choice)"}
	choices, err := sn.Choices(ctx, table, rule.CodeField)
	if err != nil {
		c.Status, c.Detail, c.Fix = Fail, trim(err.Error()), readFix(err, FixChoices)
		if errors.Is(err, snclient.ErrACLHidden) {
			c.Fix = FixChoices
			if d.opt.CloseCode != "" {
				c.Status = Warn
				c.Detail += fmt.Sprintf("; BRIDGE_CLOSE_CODE %q is sent unchecked", d.opt.CloseCode)
			}
		}
		d.add(c)
		return
	}
	values := make([]string, len(choices))
	for i, ch := range choices {
		values[i] = ch.Value
	}
	code, err := rule.Pick(table, values, d.opt.CloseCode)
	if err != nil {
		c.Status, c.Detail, c.Fix = Fail, trim(strings.TrimPrefix(err.Error(), mapping.ErrCloseCode.Error()+": ")), FixCloseCode
		d.add(c)
		return
	}
	how := "chosen from the instance's choices"
	if d.opt.CloseCode != "" {
		how = "BRIDGE_CLOSE_CODE, an active choice"
	}
	c.Status = Pass
	c.Detail = fmt.Sprintf("resolving writes send %s %q (%s; %d active) with %s", rule.CodeField, code, how, len(values), rule.NotesField)
	d.add(c)
}

// auditDelete checks the fast path of reconcile's delete detection.
func (d *run) auditDelete(ctx context.Context, sn *snclient.Client, table string) {
	c := Check{ID: "audit_delete:" + table, Title: "sys_audit_delete for " + table + " (optional)"}
	page, err := sn.List(ctx, "sys_audit_delete", snclient.ListOptions{Query: snclient.And(snclient.Field("tablename").EQ(table)), Fields: []string{"sys_id"}, Limit: 1})
	switch {
	case err != nil:
		c.Status, c.Fix = Warn, FixAuditDelete
		c.Detail = "not readable (" + statusText(err) + "): deletes whose webhook was lost are found by the presence scan instead"
	case len(page.Records) > 0:
		c.Status = Pass
		c.Detail = "readable: reconcile reads audited deletes each pass (the presence scan still covers archiving, the table cleaner and no_audit_delete tables)"
	case page.Total > 0:
		c.Status, c.Fix = Warn, FixAuditDelete
		c.Detail = fmt.Sprintf("hidden (X-Total-Count %d, no rows), as with the documented roles: deletes whose webhook was lost are found by the presence scan (BRIDGE_DELETE_SCAN_INTERVAL), not each pass", page.Total)
	default:
		// Nothing of this table counted: rows of any table tell whether
		// the user could see them.
		all, err := sn.List(ctx, "sys_audit_delete", snclient.ListOptions{Fields: []string{"sys_id"}, Limit: 1})
		if err == nil && len(all.Records) == 0 && all.Total > 0 {
			c.Status, c.Fix = Warn, FixAuditDelete
			c.Detail = fmt.Sprintf("hidden (X-Total-Count %d of any table, no rows), as with the documented roles: deletes whose webhook was lost are found by the presence scan (BRIDGE_DELETE_SCAN_INTERVAL), not each pass", all.Total)
			break
		}
		c.Status = Pass
		c.Detail = "no audited delete of " + table + " counted (none yet, or delete auditing off); the presence scan covers deletes either way"
	}
	d.add(c)
}

func (d *run) fields(ctx context.Context, sn *snclient.Client, table string, readable bool) {
	c := Check{ID: "fields:" + table, Title: "Mapped fields of " + table + " present"}
	want := d.opt.Fields[table]
	if len(want) == 0 {
		c.Status, c.Detail = Skip, "no mapping for this table (BRIDGE_MAPPING_DIR)"
		d.add(c)
		return
	}
	var missing []string
	if readable {
		page, err := sn.List(ctx, table, snclient.ListOptions{Limit: 1, Fields: want})
		if err != nil {
			c.Status, c.Detail, c.Fix = Fail, trim(err.Error()), readFix(err, FixFieldEither)
			d.add(c)
			return
		}
		if len(page.Records) == 0 {
			readable = false
		} else {
			for _, f := range want {
				if !page.Records[0].Has(f) {
					missing = append(missing, f)
				}
			}
			if len(missing) == 0 {
				c.Status, c.Detail = Pass, fmt.Sprintf("all %d present: %s", len(want), strings.Join(want, ", "))
				d.add(c)
				return
			}
		}
	}
	var dict []string
	dictErr := errDictionaryHidden
	if d.dictReadable {
		dict, dictErr = sn.DictionaryFields(ctx, table)
	}
	if !readable {
		// No row to look at: existence is all that can be checked.
		if dictErr != nil {
			c.Status, c.Detail = Skip, "no readable row, and sys_dictionary is not readable (not needed): nothing to check until a record exists"
			d.add(c)
			return
		}
		missing = notIn(want, dict)
		if len(missing) == 0 {
			c.Status, c.Detail = Pass, fmt.Sprintf("all %d exist per sys_dictionary (no readable row to check read access)", len(want))
		} else {
			c.Status, c.Fix = Fail, FixFieldName
			c.Detail = "not fields of " + table + ": " + strings.Join(missing, ", ")
		}
		d.add(c)
		return
	}
	c.Status = Fail
	if dictErr != nil {
		c.Detail, c.Fix = "missing from the answer: "+strings.Join(missing, ", "), FixFieldEither
		d.add(c)
		return
	}
	absent := notIn(missing, dict)
	hidden := notIn(missing, absent)
	var parts, fixes []string
	if len(absent) > 0 {
		parts = append(parts, "not fields of "+table+": "+strings.Join(absent, ", "))
		fixes = append(fixes, FixFieldName)
	}
	if len(hidden) > 0 {
		parts = append(parts, "hidden by a field ACL: "+strings.Join(hidden, ", "))
		fixes = append(fixes, FixFieldACL)
	}
	c.Detail, c.Fix = strings.Join(parts, "; "), strings.Join(fixes, "; ")
	d.add(c)
}

func (d *run) writeProbe(ctx context.Context, sn *snclient.Client, table string) {
	if !d.opt.WriteProbe {
		d.add(d.skippedProbe(table, ""))
		return
	}
	c := Check{ID: "write_probe:" + table, Title: "Write probe on " + table + " (create, update, delete)"}
	marker := "nowbridge doctor write probe " + d.opt.Now().UTC().Format(time.RFC3339) + " (safe to delete)"
	created, err := sn.Create(ctx, table, map[string]string{"short_description": marker})
	if err != nil {
		c.Status, c.Detail, c.Fix = Fail, "create: "+trim(err.Error()), writeFix(err)
		d.add(c)
		return
	}
	id := created["sys_id"]
	name := id
	if n := created["number"]; n != "" {
		name = n + " (" + id + ")"
	}
	if _, err := sn.Update(ctx, table, id, map[string]string{"short_description": marker + " updated"}); err != nil {
		c.Status, c.Detail, c.Fix = Fail, "created "+name+", then update: "+trim(err.Error()), writeFix(err)+"; delete "+name+" by hand"
		d.add(c)
		return
	}
	if err := sn.Delete(ctx, table, id); err != nil {
		if errors.Is(err, snclient.ErrForbidden) {
			// The bridge resolves rather than deletes by default, so a
			// refused delete is no setup error; the record is left behind.
			c.Status = Pass
			c.Detail = "created and updated " + name + "; delete refused (403), which the bridge needs only in delete mode \"delete\": delete " + name + " by hand"
			d.add(c)
			return
		}
		c.Status, c.Detail, c.Fix = Fail, "created and updated "+name+", then delete: "+trim(err.Error()), orHint(err, FixWrite)+"; delete "+name+" by hand"
		d.add(c)
		return
	}
	c.Status, c.Detail = Pass, "created, updated and deleted "+name+" (its webhooks reach the bridge like any change)"
	d.add(c)
}

// readFix says what to do about a failed read.
func readFix(err error, def string) string {
	switch {
	case errors.Is(err, snclient.ErrRateLimited):
		return FixRateLimited
	case errors.Is(err, snclient.ErrForbidden):
		return FixRoles
	case errors.Is(err, snclient.ErrBadRequest) && strings.Contains(strings.ToLower(err.Error()), "invalid table"):
		return FixTable
	}
	return orHint(err, def)
}

func writeFix(err error) string {
	if errors.Is(err, snclient.ErrForbidden) {
		if h := snclient.Hint(err); h == snclient.HintDataPolicy {
			return h
		}
		return FixWrite
	}
	return orHint(err, FixWrite)
}

func (d *run) clock() {
	c := Check{ID: "clock", Title: "Clock skew (instance Date header)"}
	skew, n := d.rec.skew()
	switch {
	case n == 0:
		c.Status, c.Detail = Skip, "no answer from the instance carried a Date header"
	case abs(skew) > d.opt.MaxClockSkew:
		c.Status, c.Fix = Fail, FixClock
		c.Detail = fmt.Sprintf("the instance's clock is %s %s this host's (limit %s)", abs(skew).Round(time.Second), aheadBehind(skew), d.opt.MaxClockSkew)
	default:
		c.Status = Pass
		c.Detail = fmt.Sprintf("the instance's clock is %s %s this host's (limit %s)", abs(skew).Round(time.Second), aheadBehind(skew), d.opt.MaxClockSkew)
	}
	d.add(c)
}

func (d *run) rateLimit() {
	c := Check{ID: "rate_limit", Title: "Rate limit headers"}
	rl := d.rec.rateLimit()
	switch {
	case rl.responses == 0:
		c.Status, c.Detail = Skip, "no answer from the instance"
	case rl.limited > 0:
		c.Status, c.Fix = Fail, FixRateLimited
		c.Detail = fmt.Sprintf("%d answer(s) were 429 Too Many Requests%s", rl.limited, rl.describe())
	case rl.limit != "":
		c.Status = Pass
		c.Detail = "a rate limit rule applies" + rl.describe() + rl.suggest()
	default:
		c.Status, c.Detail = Pass, "none seen: no rate limit rule applies to this user"
	}
	d.add(c)
}

func (d *run) webhook(ctx context.Context, base *http.Client) {
	c := Check{ID: "webhook", Title: "Bridge webhook endpoint"}
	if d.opt.WebhookURL == "" {
		c.Status, c.Detail = Skip, "pass --webhook-url https://<bridge>/webhooks/servicenow to check it"
		d.add(c)
		return
	}
	if len(d.opt.WebhookSecrets) == 0 {
		c.Status, c.Detail, c.Fix = Fail, "no webhook secret configured", FixWebhookSecret
		d.add(c)
		return
	}
	now := d.opt.Now()
	ev := &events.SNEvent{Table: probeTable, SysID: strings.Repeat("0", 32), Action: events.ActionUpdate,
		SysUpdatedOn: now.UTC().Format(events.SNTimeLayout), SysUpdatedBy: "nowbridge.doctor", Record: events.Fields{}}
	body, err := events.EncodeWebhookBody(ev)
	if err != nil {
		c.Status, c.Detail = Fail, err.Error()
		d.add(c)
		return
	}
	id := "nowbridge-doctor:" + strconv.FormatInt(now.UnixNano(), 36)

	unsigned, err := post(ctx, base, d.opt.WebhookURL, body, nil)
	if err != nil {
		c.Status, c.Detail, c.Fix = Fail, "POST "+d.opt.WebhookURL+": "+trim(err.Error()), FixWebhookUnreachable
		d.add(c)
		return
	}
	h := http.Header{}
	webhook.SetHeaders(h, d.opt.WebhookSecrets[0], id, now, body)
	signed, err := post(ctx, base, d.opt.WebhookURL, body, h)
	if err != nil {
		c.Status, c.Detail, c.Fix = Fail, "POST "+d.opt.WebhookURL+": "+trim(err.Error()), FixWebhookUnreachable
		d.add(c)
		return
	}
	switch {
	case unsigned == http.StatusNotFound || unsigned == http.StatusMethodNotAllowed:
		c.Status, c.Fix = Fail, FixWebhookPath
		c.Detail = fmt.Sprintf("POST %s answered %d", d.opt.WebhookURL, unsigned)
	case unsigned != http.StatusUnauthorized:
		c.Status, c.Fix = Fail, FixWebhookOpen
		c.Detail = fmt.Sprintf("an unsigned probe got %d, want 401", unsigned)
	case signed == http.StatusUnauthorized:
		c.Status, c.Fix = Fail, FixWebhookMismatch
		c.Detail = "reachable, but a probe signed with the first of the configured secrets got 401"
	case signed == http.StatusUnprocessableEntity || signed == http.StatusAccepted:
		c.Status = Pass
		c.Detail = fmt.Sprintf("reachable; unsigned probe refused (401), signed probe accepted (%d for the unsynced table %s, nothing stored)", signed, probeTable)
	default:
		c.Status, c.Fix = Fail, "see the bridge's log for this request ("+id+")"
		c.Detail = fmt.Sprintf("reachable, unsigned probe refused (401), but the signed probe got %d", signed)
	}
	d.add(c)
}

func post(ctx context.Context, hc *http.Client, url string, body []byte, h http.Header) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	for k, v := range h {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// recorder sees every answer from the instance: the Date header against the
// local clock, and the rate-limit headers.
type recorder struct {
	next http.RoundTripper
	now  func() time.Time

	mu        sync.Mutex
	skews     []time.Duration
	responses int
	limited   int
	limit     string
	reset     string
	rule      string
	retry     string
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	local := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.responses++
	if t, err := http.ParseTime(resp.Header.Get("Date")); err == nil {
		r.skews = append(r.skews, t.Sub(local.Truncate(time.Second)))
	}
	if v := resp.Header.Get("X-RateLimit-Limit"); v != "" {
		r.limit = v
	}
	if v := resp.Header.Get("X-RateLimit-Reset"); v != "" {
		r.reset = v
	}
	if v := resp.Header.Get("X-RateLimit-Rule"); v != "" {
		r.rule = v
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		r.limited++
		r.retry = resp.Header.Get("Retry-After")
	}
	return resp, nil
}

// CloseIdleConnections lets snclient's Close reach the real transport.
func (r *recorder) CloseIdleConnections() {
	if c, ok := r.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// skew is the median of instance minus local time over all answers.
func (r *recorder) skew() (time.Duration, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.skews) == 0 {
		return 0, 0
	}
	s := slices.Clone(r.skews)
	slices.Sort(s)
	return s[len(s)/2], len(s)
}

type rateSeen struct {
	responses, limited        int
	limit, reset, rule, retry string
}

func (r *recorder) rateLimit() rateSeen {
	r.mu.Lock()
	defer r.mu.Unlock()
	return rateSeen{r.responses, r.limited, r.limit, r.reset, r.rule, r.retry}
}

func (s rateSeen) describe() string {
	var parts []string
	if s.limit != "" {
		parts = append(parts, "X-RateLimit-Limit "+s.limit)
	}
	if n, err := strconv.ParseInt(s.reset, 10, 64); err == nil {
		parts = append(parts, "resets "+time.Unix(n, 0).UTC().Format(time.RFC3339))
	}
	if s.rule != "" {
		parts = append(parts, "rule "+s.rule)
	}
	if s.retry != "" {
		parts = append(parts, "Retry-After "+s.retry+"s")
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func (s rateSeen) suggest() string {
	n, err := strconv.ParseFloat(s.limit, 64)
	if err != nil || n <= 0 {
		return ""
	}
	return fmt.Sprintf("; keep BRIDGE_SN_RATE_LIMIT at or below %.3g requests/s (the rule's hourly count / 3600)", n/3600)
}

func apiMessage(err error) string {
	var ae *snclient.APIError
	if errors.As(err, &ae) {
		return strings.TrimSpace(ae.Message)
	}
	return ""
}

func statusText(err error) string {
	var ae *snclient.APIError
	if errors.As(err, &ae) {
		return strconv.Itoa(ae.Status) + " " + strings.TrimSpace(ae.Message)
	}
	return trim(err.Error())
}

func orHint(err error, def string) string {
	if h := snclient.Hint(err); h != "" {
		return h
	}
	return def
}

func recordName(r snclient.Record) string {
	if n := r.Get("number"); n != "" {
		return n
	}
	return r.SysID()
}

func countText(total int) string {
	if total < 0 {
		return "absent"
	}
	return strconv.Itoa(total)
}

func notIn(list, set []string) []string {
	var out []string
	for _, f := range list {
		if !slices.Contains(set, f) {
			out = append(out, f)
		}
	}
	return out
}

func abs(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

func aheadBehind(d time.Duration) string {
	if d < 0 {
		return "behind"
	}
	return "ahead of"
}

// trim keeps an error on one readable line.
func trim(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}

// WriteText prints the checklist for a person: ✓ passed, ✗ failed (with
// the fix), ⚠ works with a consequence (with what a grant adds), – skipped.
func (r Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "bridge doctor: %s\n\n", r.Instance)
	failed, warned := 0, 0
	for _, c := range r.Checks {
		mark := "✓"
		switch c.Status {
		case Fail:
			mark = "✗"
			failed++
		case Warn:
			mark = "⚠"
			warned++
		case Skip:
			mark = "–"
		}
		fmt.Fprintf(&b, "%s %s: %s\n", mark, c.Title, c.Detail)
		if (c.Status == Fail || c.Status == Warn) && c.Fix != "" {
			fmt.Fprintf(&b, "    fix: %s\n", c.Fix)
		}
	}
	switch {
	case failed == 0 && warned == 0:
		b.WriteString("\nall checks passed\n")
	case failed == 0:
		fmt.Fprintf(&b, "\nall checks passed, %d warning(s): the bridge works; each ⚠ says what a grant would add\n", warned)
	default:
		fmt.Fprintf(&b, "\n%d check(s) failed\n", failed)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON prints the report as one JSON document.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
