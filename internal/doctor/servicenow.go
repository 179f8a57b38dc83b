package doctor

// The ServiceNow checks, as the integration user sees the instance through
// snclient: token, authentication, each table's reads, fields, the reconcile
// query, close codes, sys_audit_delete and the optional write probe.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/snclient"
)

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
		Unpaced:                  true, // and the instance's own 429, not a rate limit rule's wait
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
