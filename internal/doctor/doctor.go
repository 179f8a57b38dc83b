// Package doctor checks a ServiceNow instance's integration setup for the
// bridge and says what to fix: OAuth, roles and ACLs, mapped fields, writes,
// clock skew, rate limits and the bridge's own webhook endpoint. `bridge
// doctor` is a thin command over Run; the checks talk to ServiceNow only
// through snclient, so they see the instance exactly as the bridge does.
package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/secret"
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
	ClientSecret secret.String
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
