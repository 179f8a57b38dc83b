package snsim

import (
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// SeedOptions shapes seeded incidents.
type SeedOptions struct {
	// PerSecond is how many records share each sys_updated_on second
	// (default 50), so keyset cursors must tie-break on sys_id.
	PerSecond int
	// End is the newest sys_updated_on (default: the instance clock, minus
	// one second).
	End time.Time
}

var (
	seedDescriptions = []string{
		"Email down", "Cannot connect to VPN", "Laptop battery not charging", "Printer out of toner on floor 3",
		"Password reset request", "SAP login fails with error 401", "Outlook keeps crashing", "Wi-Fi drops in meeting rooms",
		"Request for new monitor", "Database backup job failed", "Slow network in Building B", "Phone line has static",
		"Cannot access shared drive", "Software license expired", "Blue screen after update", "Website returns 503",
		"Badge reader not working", "Need access to Salesforce", "Excel macro error", "Server disk space low",
	}
	seedCategories = []string{"inquiry", "software", "hardware", "network", "database"}
	seedContact    = []string{"email", "phone", "self-service", "walk-in", "chat"}
	seedStates     = []string{"1", "1", "1", "2", "2", "2", "3", "6", "6", "7", "7", "8"}
	seedNotes      = []string{"Restarted the service.", "Replaced the device.", "User error, explained the procedure.", "Applied the vendor patch."}
)

// Seed fills incident with n realistic records, about 50 per second of
// sys_updated_on, ending now. It runs no business rules (an import).
func (s *Server) Seed(n int) error { return s.SeedWith(n, SeedOptions{}) }

// SeedWith is Seed with options.
func (s *Server) SeedWith(n int, o SeedOptions) error { return s.SeedTable("incident", n, o) }

// SeedTable fills a ticket table (TicketTables) with n realistic records,
// o.PerSecond per second of sys_updated_on, ending at o.End. Each record is
// one the platform would hold: its number, the defaults and derived fields
// of its table, the close fields its data policy needs in its state. It
// runs no business rules (an import).
func (s *Server) SeedTable(table string, n int, o SeedOptions) error {
	if n < 0 {
		return fmt.Errorf("snsim: seed count must not be negative, got %d", n)
	}
	if o.PerSecond <= 0 {
		o.PerSecond = 50
	}
	if o.End.IsZero() {
		o.End = s.now().Add(-time.Second)
	}
	end := o.End.UTC().Truncate(time.Second)
	seconds := (n + o.PerSecond - 1) / o.PerSecond
	start := end.Add(-time.Duration(seconds-1) * time.Second)

	s.knobMu.Lock()
	rng := mrand.New(mrand.NewPCG(s.rng.Uint64(), s.rng.Uint64()))
	s.knobMu.Unlock()

	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tables[table]
	if t == nil || t.s.rules == nil {
		return fmt.Errorf("snsim: cannot seed %q: seedable tables are %s", table, strings.Join(TicketTables(), ", "))
	}
	if table != "incident" {
		return s.seedTicketsLocked(t, n, start, o.PerSecond, rng)
	}
	s.seedIncidentsLocked(t, n, start, o.PerSecond, rng)
	s.log.Info("snsim seeded incidents", "count", n, "from", start.Format(snTimeLayout), "to", end.Format(snTimeLayout))
	return nil
}

// seedIncidentsLocked writes n incidents from start on; the caller holds s.mu.
func (s *Server) seedIncidentsLocked(t *table, n int, start time.Time, perSecond int, rng *mrand.Rand) {
	userIDs := make([]string, 0, len(demoUsers))
	logins := make([]string, 0, len(demoUsers))
	for _, u := range demoUsers {
		userIDs = append(userIDs, s.userID(u[0]))
		logins = append(logins, u[0])
	}
	groupIDs := make([]string, 0, len(demoGroups))
	for _, g := range demoGroups {
		groupIDs = append(groupIDs, stableID("sys_user_group", g))
	}
	stamps := map[int64]string{}
	stamp := func(tm time.Time) string {
		k := tm.Unix()
		if v, ok := stamps[k]; ok {
			return v
		}
		v := tm.Format(snTimeLayout)
		stamps[k] = v
		return v
	}
	// Resolved and closed records carry the instance's own close codes.
	var closeCodes []string
	if f, _, ok := t.s.field("close_code"); ok {
		for _, c := range f.choices {
			if !c.Inactive {
				closeCodes = append(closeCodes, c.Value)
			}
		}
	}
	small := make([]string, 10)
	for i := range small {
		small[i] = strconv.Itoa(i)
	}
	idx := func(name string) int { return t.s.idx(name) }
	iNum, iShort, iState, iImpact, iUrg, iPrio, iActive := idx("number"), idx("short_description"), idx("state"), idx("impact"), idx("urgency"), idx("priority"), idx("active")
	iCaller, iAssigned, iGroup, iOpenedBy, iOpenedAt := idx("caller_id"), idx("assigned_to"), idx("assignment_group"), idx("opened_by"), idx("opened_at")
	iCat, iContact, iCloseCode, iCloseNotes, iIncState := idx("category"), idx("contact_type"), idx("close_code"), idx("close_notes"), idx("incident_state")
	iResAt, iResBy, iClosedAt, iClosedBy := idx("resolved_at"), idx("resolved_by"), idx("closed_at"), idx("closed_by")
	iCreated, iCreatedBy, iUpdatedBy, iMod, iClass, iDomain := idx("sys_created_on"), idx("sys_created_by"), idx("sys_updated_by"), idx("sys_mod_count"), idx("sys_class_name"), idx("sys_domain")
	iSev, iEsc, iReassign, iReopen, iDesc := idx("severity"), idx("escalation"), idx("reassignment_count"), idx("reopen_count"), idx("description")

	rows := make([]*row, n)
	for i := range n {
		r := t.newRow()
		updated := start.Add(time.Duration(i/perSecond) * time.Second)
		created := updated.Add(-time.Duration(rng.IntN(30*24*3600)) * time.Second)
		v := r.vals
		v[t.iID] = randHexFrom(rng, 32)
		v[t.iUpdated] = stamp(updated)
		v[iCreated] = stamp(created)
		v[iNum] = fmt.Sprintf("%s%07d", t.s.prefix, t.next)
		t.next++
		v[iShort] = seedDescriptions[rng.IntN(len(seedDescriptions))]
		if rng.IntN(3) == 0 {
			v[iDesc] = v[iShort] + ". Reported by the caller; see work notes."
		}
		state := seedStates[rng.IntN(len(seedStates))]
		v[iState], v[iIncState] = state, state
		imp, urg := small[1+rng.IntN(3)], small[1+rng.IntN(3)]
		v[iImpact], v[iUrg], v[iPrio] = imp, urg, priorityMatrix[[2]string{imp, urg}]
		v[iActive] = "true"
		u := rng.IntN(len(userIDs))
		v[iCaller] = userIDs[u]
		v[iOpenedBy] = userIDs[rng.IntN(len(userIDs))]
		v[iOpenedAt] = v[iCreated]
		v[iCreatedBy] = logins[rng.IntN(len(logins))]
		v[iUpdatedBy] = logins[rng.IntN(len(logins))]
		if state != "1" {
			v[iAssigned] = userIDs[rng.IntN(len(userIDs))]
			v[iGroup] = groupIDs[rng.IntN(len(groupIDs))]
		}
		v[iCat] = seedCategories[rng.IntN(len(seedCategories))]
		v[iContact] = seedContact[rng.IntN(len(seedContact))]
		v[iMod] = small[rng.IntN(9)]
		v[iClass], v[iDomain] = "incident", "global"
		v[iSev], v[iEsc], v[iReassign], v[iReopen] = "3", "0", "0", "0"
		if state == "6" || state == "7" {
			if len(closeCodes) > 0 {
				v[iCloseCode] = closeCodes[rng.IntN(len(closeCodes))]
			}
			v[iCloseNotes] = seedNotes[rng.IntN(len(seedNotes))]
			v[iResAt], v[iResBy] = v[t.iUpdated], v[iAssigned]
			if state == "7" {
				v[iClosedAt], v[iClosedBy] = v[t.iUpdated], v[iAssigned]
			}
		}
		if state == "7" || state == "8" {
			v[iActive] = "false"
		}
		rows[i] = r
	}
	t.bulkAppend(rows)
}
