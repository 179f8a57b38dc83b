package outbound

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Policy decides a field that changed on both sides since the last sync.
type Policy string

// Conflict policies (per field; default NewestWins).
const (
	ServiceNowWins Policy = "servicenow_wins"
	SaaSWins       Policy = "saas_wins"
	// NewestWins compares the record's sys_updated_on with the app's
	// updated_at at ServiceNow's one-second resolution; a tie goes to
	// ServiceNow, the system of record, so the outcome never depends on
	// which side's event the bridge happens to see first.
	NewestWins Policy = "newest_wins"
)

// Valid reports whether p is a known policy.
func (p Policy) Valid() bool {
	switch p {
	case ServiceNowWins, SaaSWins, NewestWins:
		return true
	}
	return false
}

// Conflict is one field changed on both sides since the last sync.
type Conflict struct {
	Field      string // ServiceNow field name
	Base       string // value at the last sync
	ServiceNow string // ServiceNow's current value
	SaaS       string // the app's value
	Policy     Policy
	Winner     string // "servicenow" or "saas"
}

// planInput is everything a write decision depends on, all in ServiceNow
// field names and values.
type planInput struct {
	Desired map[string]string // the app's values for plain fields
	Journal map[string]string // journal entries the app adds (the table's journal fields)
	// Base holds the values both sides last agreed on: what ServiceNow last
	// told the bridge (and the apply pipeline handed to the app), or what
	// the bridge last wrote. Nil when unknown.
	Base map[string]string
	// Current is ServiceNow's record now; nil when not read (then Base
	// stands in for it).
	Current      map[string]string
	SNUpdatedAt  time.Time // Current's sys_updated_on
	AppUpdatedAt time.Time
	Policy       func(field string) Policy
}

// writePlan is what to send.
type writePlan struct {
	Patch     map[string]string // fields to send (plain + journal)
	Conflicts []Conflict
}

// needsCurrent reports whether deciding requires ServiceNow's current
// record: some plain field the app sends differs from the last synced value
// (only then could ServiceNow have changed it too), or the base is unknown.
func needsCurrent(in planInput) bool {
	if in.Base == nil {
		return len(in.Desired) > 0
	}
	for f, v := range in.Desired {
		if b, ok := in.Base[f]; !ok || b != v {
			return true
		}
	}
	return false
}

// plan decides which fields to write. A field the app did not change since
// the last sync is never written, even when it differs from ServiceNow now
// (ServiceNow changed it and the apply pipeline is carrying that to the
// app): that is what stops two sides from "correcting" each other forever.
// Journal entries are always appended (never compared with the field, which
// holds other entries), except an exact echo of the entry last synced.
func plan(in planInput) writePlan {
	cur := in.Current
	if cur == nil {
		cur = in.Base
	}
	out := writePlan{Patch: map[string]string{}}
	for _, f := range slices.Sorted(maps.Keys(in.Desired)) {
		v := in.Desired[f]
		c, haveCur := cur[f]
		if haveCur && c == v {
			continue // already so in ServiceNow
		}
		b, haveBase := in.Base[f]
		if haveBase && b == v {
			continue // the app did not change it; ServiceNow did
		}
		if haveBase && haveCur && c != b {
			// Changed on both sides since the last sync, to different values.
			cf := Conflict{Field: f, Base: b, ServiceNow: c, SaaS: v, Policy: in.Policy(f)}
			cf.Winner = decide(cf.Policy, in.SNUpdatedAt, in.AppUpdatedAt)
			out.Conflicts = append(out.Conflicts, cf)
			if cf.Winner == "servicenow" {
				continue
			}
		}
		out.Patch[f] = v
	}
	for _, f := range slices.Sorted(maps.Keys(in.Journal)) {
		v := in.Journal[f]
		if strings.TrimSpace(v) == "" {
			continue
		}
		if b, ok := in.Base[f]; ok && b == v {
			continue // the app echoing the entry it was handed
		}
		out.Patch[f] = v
	}
	return out
}

func decide(p Policy, snUpdated, appUpdated time.Time) string {
	switch p {
	case SaaSWins:
		return "saas"
	case ServiceNowWins:
		return "servicenow"
	}
	// ServiceNow stamps whole seconds: compare at that resolution, ties to ServiceNow.
	if appUpdated.UTC().Truncate(time.Second).After(snUpdated.UTC().Truncate(time.Second)) {
		return "saas"
	}
	return "servicenow"
}

func (c Conflict) String() string {
	return fmt.Sprintf("%s: base %q, servicenow %q, saas %q: %s wins by %s", c.Field, c.Base, c.ServiceNow, c.SaaS, c.Winner, c.Policy)
}
