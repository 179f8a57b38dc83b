package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/apply"
	"github.com/nowbridge/nowbridge/internal/dedupe"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/inbound"
)

// demoScript is what the walk-through and the demo do with one table: a
// person's edit of a seeded record, the app's create of its own record and
// its next version, and a person's edit of that record which the app then
// echoes back.
type demoScript struct {
	table  string
	entity string // the app's entity, from the table's mapping
	appID  string // the app's record the demo creates
	// person is a person's edit of a seeded record; personDid says it.
	person    map[string]string
	personDid string
	// create and update are the app's first two versions of appID; the
	// update sets ServiceNow's updatedField to updatedValue.
	create, update             map[string]string
	updatedField, updatedValue string
	// raise is the person's edit of the app's record.
	raise map[string]string
}

// demoScripts tell a story per table where the mapping has one to tell;
// other tables get genericScript.
var demoScripts = map[string]demoScript{
	"incident": {
		appID:        "TCK-1001",
		person:       map[string]string{"state": "2", "short_description": "Email down for everyone"},
		personDid:    "set it to In Progress",
		create:       map[string]string{"title": "Printer on fire", "status": "new", "urgency": "1", "impact": "2", "comment": "Smoke seen"},
		update:       map[string]string{"title": "Printer on fire", "status": "in_progress", "comment": "Technician on the way"},
		updatedField: "state", updatedValue: "2",
		// A person raises the urgency: ServiceNow computes the priority.
		raise: map[string]string{"urgency": "2", "impact": "1"},
	},
	"change_request": {
		appID:     "CR-1001",
		person:    map[string]string{"short_description": "Patch database servers tonight", "risk": "2"},
		personDid: "retitled it and raised its risk to High",
		create:    map[string]string{"title": "Rotate the VPN certificates", "status": "new", "type": "normal", "comment": "Window: Saturday 02:00"},
		update:    map[string]string{"title": "Rotate the VPN certificates", "status": "assess", "work_note": "CAB on Thursday"},
		// The change moves to Assess (-4).
		updatedField: "state", updatedValue: "-4",
		raise: map[string]string{"risk": "2", "short_description": "Rotate the VPN and proxy certificates"},
	},
}

// genericScript is the demo of a table without a story: titles only, which
// every shipped mapping syncs.
func genericScript(table, entity string) demoScript {
	return demoScript{
		appID:     strings.ToUpper(strings.ReplaceAll(entity, "_", "-")) + "-1001",
		person:    map[string]string{"short_description": "Edited in ServiceNow"},
		personDid: "retitled it",
		create:    map[string]string{"title": "Created by the app", "comment": "Opened from the app"},
		update:    map[string]string{"title": "Renamed by the app"},
		// The title is short_description in every shipped mapping.
		updatedField: "short_description", updatedValue: "Renamed by the app",
		raise: map[string]string{"short_description": "Edited again in ServiceNow"},
	}
}

// scripts are the demo scripts of the dev bridge's tables, in their order.
func (st *devStack) scripts() []demoScript {
	var out []demoScript
	for _, table := range st.tables {
		entity, _ := st.b.mapping.Entity(table)
		s, ok := demoScripts[table]
		if !ok {
			s = genericScript(table, entity)
		}
		s.table, s.entity = table, entity
		out = append(out, s)
	}
	return out
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func printWalkthrough(out io.Writer, st *devStack) {
	natsURL := st.ns.ClientURL()
	scripts := st.scripts()
	var entities []string
	for _, s := range scripts {
		entities = append(entities, s.entity)
	}
	fmt.Fprintf(out, `nowbridge dev: everything runs in this process.

  NATS JetStream   %s   (data: %s)
  ServiceNow sim   %s   client id %s, client secret %s
  bridge           %s   POST %s, /healthz, /readyz, /metrics
  webhook secret   %s   (the simulator's business rules sign with it)
  tables           %s   (BRIDGE_TABLES; the app's entities: %s)

Try it (the nats CLI is optional: go install github.com/nats-io/natscli/nats@v0.5.0):

  # 1. Watch what the bridge hands the SaaS app, every entity
  nats --server %s sub 'bridge.apply.>'

  # 2. Change records in ServiceNow (the simulator): each business rule posts a
  #    signed webhook, the bridge publishes bridge.apply.<entity>.update
  TOKEN=$(curl -s -d grant_type=client_credentials -d client_id=%s -d client_secret=%s %s/oauth_token.do | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
`, natsURL, st.dataDir, st.simURL, st.clientID, st.clientSc, st.bridge, inbound.Path, st.secret.Encoded(),
		strings.Join(st.tables, ","), strings.Join(entities, ", "),
		natsURL, st.clientID, st.clientSc, st.simURL)
	for _, s := range scripts {
		id := "<sys_id>"
		if ids := st.sim.IDs(s.table); len(ids) > 0 {
			id = ids[0]
		}
		fmt.Fprintf(out, "  curl -s -X PATCH -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\\n       -d '%s' %s/api/now/table/%s/%s\n",
			jsonOf(s.person), st.simURL, s.table, id)
	}
	fmt.Fprintf(out, `
  # 3. The SaaS app creates records: the bridge POSTs each with correlation_id=<the app's id>,
  #    and the business rule's webhook for that insert is recognised as the bridge's own echo.
  #    The app hears each change's outcome (created, with the number and the record's link;
  #    updated, unchanged, rejected with ServiceNow's reason, ...) on bridge.result.<entity>.<outcome>:
  nats --server %s sub 'bridge.result.>'
`, natsURL)
	now := time.Now().UTC()
	for _, s := range scripts {
		fmt.Fprintf(out, "  nats --server %s pub app.%s.upsert '%s'\n", natsURL, s.entity,
			jsonOf(events.AppChange{ExternalID: s.appID, Version: 1, UpdatedAt: now, Fields: s.create}))
	}
	for _, s := range scripts {
		fmt.Fprintf(out, "  curl -s -H \"Authorization: Bearer $TOKEN\" '%s/api/now/table/%s?sysparm_query=correlation_id=%s&sysparm_fields=number,state,priority,short_description'\n",
			st.simURL, s.table, s.appID)
	}
	fmt.Fprintf(out, "\n  # 4. The app updates them: one PATCH each with only the fields that differ; nothing comes back on bridge.apply\n")
	for _, s := range scripts {
		fmt.Fprintf(out, "  nats --server %s pub app.%s.upsert '%s'\n", natsURL, s.entity,
			jsonOf(events.AppChange{ExternalID: s.appID, Version: 2, UpdatedAt: now.Add(time.Minute), Fields: s.update}))
	}
	fmt.Fprintf(out, `
  # Metrics: echoes suppressed, writes, conflicts
  curl -s %s/metrics | grep -E 'bridge_echoes_suppressed_total|bridge_writeback_|conflicts_total'
`, st.bridge)
}

// demo drives the dev bridge: every step acts on every synced table at
// once and waits until each table's change has flowed.
type demo struct {
	ctx     context.Context
	out     io.Writer
	st      *devStack
	applied chan *nats.Msg
	runs    []*demoRun
}

// demoRun is one table's script and the records it touches.
type demoRun struct {
	demoScript
	seeded  string // sys_id of the seeded record a person edits
	created string // sys_id of the app's record
}

// runDemo drives changes in both directions for every synced table at once
// and prints them flowing.
func runDemo(ctx context.Context, out io.Writer, st *devStack) error {
	d := &demo{ctx: ctx, out: out, st: st, applied: make(chan *nats.Msg, 256)}
	sub, err := st.nc.ChanSubscribe(events.ApplySubjects, d.applied)
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	var ids []string
	for _, s := range st.scripts() {
		seeded := st.sim.IDs(s.table)
		if len(seeded) == 0 {
			return fmt.Errorf("demo: the simulator has no %s records (use --seed %d or more: one record per table at least)", s.table, len(st.tables))
		}
		d.runs = append(d.runs, &demoRun{demoScript: s, seeded: seeded[0]})
		ids = append(ids, fmt.Sprintf("%s %s", s.entity, s.appID))
	}
	steps := []struct {
		what string
		run  func() error
	}{
		{"a person changes a record of each table in ServiceNow -> the app hears about each", d.personEdits},
		{"the app creates " + strings.Join(ids, " and ") + " -> one POST each, their webhooks are echoes", d.appCreates},
		{"the app moves them forward -> one PATCH each with only what differs, nothing echoes back", d.appUpdates},
		{"a person edits the app's records in ServiceNow -> the app gets them, the app's echoes write nothing", d.appEchoes},
	}
	for i, step := range steps {
		fmt.Fprintf(out, "\n== demo %d: %s\n", i+1, step.what)
		if err := step.run(); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "\nDemo done: %s in sync both ways; %d webhooks suppressed as echoes, %d ServiceNow writes by the bridge, 0 loops.\n",
		strings.Join(st.tables, " and "), demoEchoes(st), d.writes())
	return nil
}

// personEdits: a person edits a seeded record of each table.
func (d *demo) personEdits() error {
	want := map[string]string{}
	for _, r := range d.runs {
		rec, err := d.st.sim.Update(r.table, r.seeded, r.person, "beth.anglin")
		if err != nil {
			return err
		}
		fmt.Fprintf(d.out, "   ServiceNow: beth.anglin %s: %s %s (sys_mod_count %s)\n", r.personDid, r.table, rec["number"], rec["sys_mod_count"])
		want[r.entity] = r.seeded
	}
	_, err := d.waitApplied(want, "the ServiceNow change")
	return err
}

// appCreates: the app creates a record of each entity; each is one POST,
// and each insert's webhook is the bridge's echo.
func (d *demo) appCreates() error {
	echoes := demoEchoes(d.st)
	for _, r := range d.runs {
		if err := d.publish(r, 1, r.create); err != nil {
			return err
		}
	}
	for _, r := range d.runs {
		if err := d.waitUntil("the POST of "+r.appID, func() bool {
			_, id, ok, _ := d.st.b.links.SysID(d.ctx, r.entity, r.appID)
			r.created = id
			return ok
		}); err != nil {
			return err
		}
		rec, _ := d.st.sim.Get(r.table, r.created)
		fmt.Fprintf(d.out, "   ServiceNow: %s %s created, correlation_id=%s state=%s priority=%s comments: %d entry(ies)\n",
			r.table, rec["number"], rec["correlation_id"], rec["state"], rec["priority"], len(d.st.sim.Journal(r.created, "comments")))
	}
	if err := d.waitUntil("the insert webhooks' echoes", func() bool { return demoEchoes(d.st) >= echoes+len(d.runs) }); err != nil {
		return err
	}
	fmt.Fprintln(d.out, "   receiver: each insert's webhook was recognised as the bridge's own write (not sent back to the app)")
	return nil
}

// appUpdates: the app's next version of each record is one PATCH whose
// webhook is an echo; nothing reaches the app.
func (d *demo) appUpdates() error {
	echoes := demoEchoes(d.st)
	for _, r := range d.runs {
		if err := d.publish(r, 2, r.update); err != nil {
			return err
		}
	}
	for _, r := range d.runs {
		if err := d.waitUntil("the PATCH of "+r.appID, func() bool {
			rec, _ := d.st.sim.Get(r.table, r.created)
			return rec[r.updatedField] == r.updatedValue
		}); err != nil {
			return err
		}
	}
	if err := d.waitUntil("the update webhooks' echoes", func() bool { return demoEchoes(d.st) >= echoes+len(d.runs) }); err != nil {
		return err
	}
	for _, r := range d.runs {
		rec, _ := d.st.sim.Get(r.table, r.created)
		fmt.Fprintf(d.out, "   ServiceNow: %s %s %s=%s sys_mod_count=%s, comments: %d entries; its webhook was an echo\n",
			r.table, rec["number"], r.updatedField, rec[r.updatedField], rec["sys_mod_count"], len(d.st.sim.Journal(r.created, "comments")))
	}
	if m, err := d.next(time.Second); err != nil || m != nil {
		return errors.Join(errors.New("demo: the bridge's own write came back on bridge.apply (echo not suppressed)"), err)
	}
	fmt.Fprintln(d.out, "   bridge.apply: quiet, as it should be")
	return nil
}

// appEchoes: a person edits each app record; the app gets it and
// republishes what it was handed, as many apps do: no write follows.
func (d *demo) appEchoes() error {
	want := map[string]string{}
	for _, r := range d.runs {
		if _, err := d.st.sim.Update(r.table, r.created, r.raise, "beth.anglin"); err != nil {
			return err
		}
		want[r.entity] = r.created
	}
	handed, err := d.waitApplied(want, "the person's edit of the app's record")
	if err != nil {
		return err
	}
	before := d.st.sim.RequestCount("PATCH", "", 0)
	for _, r := range d.runs {
		if err := d.publish(r, 3, handed[r.entity].Fields); err != nil {
			return err
		}
	}
	time.Sleep(time.Second)
	if after := d.st.sim.RequestCount("PATCH", "", 0); after != before {
		return fmt.Errorf("demo: the app's echoes caused %d PATCH(es)", after-before)
	}
	fmt.Fprintln(d.out, "   app republished what it was handed -> recognised as echoes, no write to ServiceNow")
	return nil
}

// writes counts the bridge's writes to ServiceNow: PATCHes and each
// table's POSTs.
func (d *demo) writes() int {
	n := d.st.sim.RequestCount("PATCH", "", 0)
	for _, r := range d.runs {
		n += d.st.sim.RequestCount("POST", "/api/now/table/"+r.table, 0)
	}
	return n
}

// next prints and returns the next apply message, nil after d.
func (d *demo) next(wait time.Duration) (*apply.Message, error) {
	select {
	case m := <-d.applied:
		var am apply.Message
		if err := json.Unmarshal(m.Data, &am); err != nil {
			return nil, err
		}
		fmt.Fprintf(d.out, "   <- %s  external_id=%q sys_id=%s number=%s version=%d fields=%s\n", m.Subject, am.ExternalID, am.SysID, am.Number, am.Version, sortedFields(am.Fields))
		return &am, nil
	case <-time.After(wait):
		return nil, nil
	case <-d.ctx.Done():
		return nil, d.ctx.Err()
	}
}

// waitApplied waits for an apply message of each entity about its record
// (entity -> sys_id) and returns them by entity.
func (d *demo) waitApplied(want map[string]string, what string) (map[string]*apply.Message, error) {
	got := map[string]*apply.Message{}
	deadline := time.Now().Add(15 * time.Second)
	for len(got) < len(want) {
		m, err := d.next(time.Until(deadline))
		if err != nil {
			return nil, err
		}
		if m == nil {
			missing := slices.Sorted(maps.Keys(want))
			missing = slices.DeleteFunc(missing, func(e string) bool { return got[e] != nil })
			return nil, fmt.Errorf("demo: no bridge.apply message for %s of %s within 15s", what, strings.Join(missing, ", "))
		}
		if want[m.Entity] == m.SysID {
			got[m.Entity] = m
		}
	}
	return got, nil
}

func (d *demo) waitUntil(what string, cond func() bool) error {
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: %s did not happen within 15s", what)
		}
		select {
		case <-d.ctx.Done():
			return d.ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// publish sends version of the app's record as the app does.
func (d *demo) publish(r *demoRun, version int64, fields map[string]string) error {
	body, _ := json.Marshal(events.AppChange{ExternalID: r.appID, Version: version, UpdatedAt: time.Now().UTC(), Fields: fields})
	_, err := d.st.js.Publish(d.ctx, events.AppSubject(r.entity, events.AppUpsert), body,
		jetstream.WithMsgID(events.AppMsgID(r.entity, r.appID, version, events.AppUpsert)))
	return err
}

// demoEchoes is bridge_echoes_suppressed_total{direction="servicenow"}.
func demoEchoes(st *devStack) int {
	mfs, _ := st.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "bridge_echoes_suppressed_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "direction" && l.GetValue() == dedupe.DirServiceNow {
					return int(m.GetCounter().GetValue())
				}
			}
		}
	}
	return 0
}

func sortedFields(f map[string]string) string {
	parts := make([]string, 0, len(f))
	for _, k := range slices.Sorted(maps.Keys(f)) {
		parts = append(parts, k+"="+f[k])
	}
	return "{" + strings.Join(parts, " ") + "}"
}
