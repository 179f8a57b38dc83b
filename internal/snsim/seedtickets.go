package snsim

import (
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"time"
)

// seedProfile shapes the seeded records of one ticket table.
type seedProfile struct {
	descriptions []string
	states       []string            // drawn uniformly: repeat a state to weight it
	values       map[string][]string // other fields, drawn uniformly
	// byState sets fields that follow the state (a requested item's stage).
	byState map[string]map[string]string
	people  []string // reference fields to a person, drawn from the demo users
}

var seedProfiles = map[string]seedProfile{
	"change_request": {
		descriptions: []string{"Replace core switch in building A", "Patch database servers", "Upgrade VPN concentrator firmware", "Rotate TLS certificates",
			"Decommission legacy mail server", "Add disk to file server", "Move payroll to new cluster", "Update firewall rules for SAP"},
		states: []string{"-5", "-5", "-4", "-3", "-2", "-1", "0", "3", "3", "3", "4"},
		values: map[string][]string{"type": {"normal", "normal", "standard", "emergency"}, "category": {"hardware", "software", "network", "service"},
			"risk": {"2", "3", "3", "4"}},
		people: []string{"requested_by"},
	},
	"problem": {
		descriptions: []string{"Mail gateway restarts daily", "VPN drops under load", "Printer driver crashes the spooler", "Slow logins on Monday mornings",
			"Nightly backups exceed their window", "Intermittent 503 on the intranet"},
		states: []string{"101", "101", "102", "103", "104", "104", "106", "107", "107"},
		values: map[string][]string{"known_error": {"false", "false", "true"}},
	},
	"sc_req_item": {
		descriptions: []string{"Standard laptop", "Extra monitor", "Mobile phone", "Software license: Visio", "Headset", "Access to the finance share"},
		states:       []string{"-5", "1", "1", "2", "2", "3", "3", "3", "4", "7"},
		values:       map[string][]string{"quantity": {"1", "1", "1", "2", "3"}},
		byState: map[string]map[string]string{
			"-5": {"stage": "waiting_for_approval"}, "1": {"stage": "request_approved"}, "2": {"stage": "fulfillment"},
			"3": {"stage": "complete"}, "4": {"stage": "Request Cancelled"}, "7": {"stage": "complete"},
		},
		people: []string{"requested_for"},
	},
	"sn_hr_core_case": {
		descriptions: []string{"Parental leave request", "Update direct deposit", "Benefits enrollment question", "Employment verification letter",
			"Relocation support", "Correct my job title"},
		states: []string{"1", "10", "10", "18", "18", "20", "24", "3", "3", "4", "7"},
		people: []string{"opened_for", "subject_person"},
	},
}

// seedTicketsLocked writes n records of a ticket table other than incident
// from start on, perSecond per sys_updated_on second, each passed through
// the table's own rules (defaults, number, derived fields, data policy) as
// the platform would hold it. The caller holds s.mu.
func (s *Server) seedTicketsLocked(t *table, n int, start time.Time, perSecond int, rng *mrand.Rand) error {
	p, ok := seedProfiles[t.s.name]
	if !ok {
		return fmt.Errorf("snsim: no seed profile for %s", t.s.name)
	}
	users := make([]string, 0, len(demoUsers))
	logins := make([]string, 0, len(demoUsers))
	for _, u := range demoUsers {
		users = append(users, s.userID(u[0]))
		logins = append(logins, u[0])
	}
	pick := func(vs []string) string { return vs[rng.IntN(len(vs))] }
	rows := make([]*row, 0, n)
	for i := range n {
		updated := start.Add(time.Duration(i/perSecond) * time.Second)
		created := updated.Add(-time.Duration(rng.IntN(30*24*3600)) * time.Second)
		r := t.newRow()
		set := func(name, v string) {
			if j := t.s.idx(name); j >= 0 {
				r.vals[j] = v
			}
		}
		r.vals[t.iID] = randHexFrom(rng, 32)
		state := pick(p.states)
		set("state", state)
		set("short_description", pick(p.descriptions))
		set("impact", strconv.Itoa(1+rng.IntN(3)))
		set("urgency", strconv.Itoa(1+rng.IntN(3)))
		set("opened_at", created.Format(snTimeLayout))
		set("opened_by", pick(users))
		for _, f := range p.people {
			set(f, pick(users))
		}
		for f, vs := range p.values {
			set(f, pick(vs))
		}
		for f, v := range p.byState[state] {
			set(f, v)
		}
		if state != p.states[0] {
			set("assigned_to", pick(users))
			set("assignment_group", stableID("sys_user_group", pick(demoGroups)))
		}
		s.seedCloseFields(t, r, rows, rng)
		login := pick(logins)
		if err := s.applyRules(t, nil, r, login, updated.Format(snTimeLayout)); err != nil {
			return fmt.Errorf("snsim: seeded %s record breaks its own rules (a bug in the seed profile): %w", t.s.name, err)
		}
		set("sys_created_on", created.Format(snTimeLayout))
		set("sys_created_by", login)
		set("sys_updated_on", updated.Format(snTimeLayout))
		set("sys_updated_by", pick(logins))
		set("sys_mod_count", strconv.Itoa(rng.IntN(9)))
		set("sys_class_name", t.s.name)
		rows = append(rows, r)
	}
	t.bulkAppend(rows)
	s.log.Info("snsim seeded "+t.s.name, "count", n)
	return nil
}

// seedCloseFields fills what the table's data policies need in the row's
// state: a field a policy's value depends on gets a choice whose own needs
// can be met (a reference to an earlier record only once there is one).
func (s *Server) seedCloseFields(t *table, r *row, earlier []*row, rng *mrand.Rand) {
	state := t.get("state", r)
	fill := func(name string) {
		f, i, ok := t.s.field(name)
		if !ok || r.vals[i] != "" {
			return
		}
		switch {
		case f.choices != nil:
			var active []string
			for _, c := range f.choices {
				if !c.Inactive {
					active = append(active, c.Value)
				}
			}
			if len(active) > 0 {
				r.vals[i] = active[rng.IntN(len(active))]
			}
		case f.typ == typeReference && f.ref == t.s.name && len(earlier) > 0:
			r.vals[i] = earlier[rng.IntN(len(earlier))].id(t)
		case f.typ == typeReference:
			r.vals[i] = s.userID(demoUsers[rng.IntN(len(demoUsers))][0])
		default:
			r.vals[i] = seedNotes[rng.IntN(len(seedNotes))]
		}
	}
	for _, p := range t.s.rules.policies {
		if !slices.Contains(p.states, state) {
			continue
		}
		for _, n := range p.required {
			if n != p.dependsOn {
				fill(n)
			}
		}
		if p.dependsOn == "" {
			continue
		}
		f, i, _ := t.s.field(p.dependsOn)
		var usable []string
		for _, c := range f.choices {
			if !c.Inactive && (len(earlier) > 0 || !needsSameTableRef(t, p.byValue[c.Value])) {
				usable = append(usable, c.Value)
			}
		}
		if len(usable) == 0 {
			continue
		}
		r.vals[i] = usable[rng.IntN(len(usable))]
		for _, n := range p.byValue[r.vals[i]] {
			fill(n)
		}
	}
}

// needsSameTableRef reports whether one of the fields references the
// table itself (problem.duplicate_of).
func needsSameTableRef(t *table, fields []string) bool {
	for _, n := range fields {
		if f, _, ok := t.s.field(n); ok && f.typ == typeReference && f.ref == t.s.name {
			return true
		}
	}
	return false
}
