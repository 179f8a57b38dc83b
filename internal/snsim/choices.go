package snsim

import (
	"fmt"
	"slices"
	"strconv"
)

// Choice is one value of a choice field, as its sys_choice row holds it
// (name = the table, element = the field, language "en").
type Choice struct {
	Value    string
	Label    string
	Sequence int
	// Inactive choices still label stored values but are no choice for a
	// write: a strict field (incident.close_code) drops them.
	Inactive bool
}

// choiceList builds a list from value, label pairs, sequenced in order.
func choiceList(pairs ...string) []Choice {
	out := make([]Choice, 0, len(pairs)/2)
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, Choice{Value: pairs[i], Label: pairs[i+1], Sequence: (i/2 + 1) * 10})
	}
	return out
}

// CurrentCloseCodes returns incident.close_code's choices on current
// releases (the simulator's default).
func CurrentCloseCodes() []Choice {
	return choiceList(
		"Duplicate", "Duplicate",
		"Known error", "Known error",
		"No resolution provided", "No resolution provided",
		"Resolved by caller", "Resolved by caller",
		"Resolved by change", "Resolved by change",
		"Resolved by problem", "Resolved by problem",
		"Resolved by request", "Resolved by request",
		"Solution provided", "Solution provided",
		"Workaround provided", "Workaround provided",
		"User error", "User error",
	)
}

// LegacyCloseCodes returns incident.close_code's choices on older releases
// (Config.LegacyCloseCodes, bridge sim --legacy-close-codes).
func LegacyCloseCodes() []Choice {
	return choiceList(
		"Solved (Work Around)", "Solved (Work Around)",
		"Solved (Permanently)", "Solved (Permanently)",
		"Solved Remotely (Work Around)", "Solved Remotely (Work Around)",
		"Solved Remotely (Permanently)", "Solved Remotely (Permanently)",
		"Not Solved (Not Reproducible)", "Not Solved (Not Reproducible)",
		"Not Solved (Too Costly)", "Not Solved (Too Costly)",
		"Closed/Resolved by Caller", "Closed/Resolved by Caller",
	)
}

// setChoices gives the field its own copy of a choice list, in sequence
// order, and the labels display values use.
func (f *field) setChoices(cs []Choice) {
	if cs == nil {
		return
	}
	f.choices = slices.Clone(cs)
	slices.SortStableFunc(f.choices, func(a, b Choice) int { return a.Sequence - b.Sequence })
	f.labels = make(map[string]string, len(cs))
	for _, c := range f.choices {
		f.labels[c.Value] = c.Label
	}
}

// activeChoice reports whether v is an active choice of the field.
func (f *field) activeChoice(v string) bool {
	for _, c := range f.choices {
		if c.Value == v {
			return !c.Inactive
		}
	}
	return false
}

func choiceSchema() *tableSchema {
	fs := append(sysFields("sys_choice"),
		&field{name: "name", label: "Table", maxLen: 80},
		&field{name: "element", label: "Element", maxLen: 80},
		&field{name: "language", label: "Language", maxLen: 40},
		&field{name: "value", label: "Value", maxLen: 40},
		&field{name: "label", label: "Label", maxLen: 100},
		&field{name: "sequence", label: "Sequence", typ: typeInteger},
		&field{name: "inactive", label: "Inactive", typ: typeBoolean},
		&field{name: "dependent_value", label: "Dependent value", maxLen: 100},
	)
	t := newSchema("sys_choice", "Choices", "", "label", fs)
	t.readOnly = true // the integration user reads choice lists; an admin edits them
	return t
}

// choiceRowID is a choice row's sys_id: stable, so a list's rows keep
// their ids when the list changes.
func choiceRowID(table, element, value string) string {
	return stableID("sys_choice", table+"."+element+"."+value)
}

// syncChoicesLocked makes sys_choice hold exactly the field's choices:
// changed rows are updated (sys_mod_count + 1), new ones inserted, rows of
// values no longer in the list deleted. The caller holds s.mu.
func (s *Server) syncChoicesLocked(table string, f *field, stamp string) {
	sc := s.tables["sys_choice"]
	keep := make(map[string]bool, len(f.choices))
	for _, c := range f.choices {
		id := choiceRowID(table, f.name, c.Value)
		keep[id] = true
		want := map[string]string{
			"name": table, "element": f.name, "language": "en", "value": c.Value, "label": c.Label,
			"sequence": strconv.Itoa(c.Sequence), "inactive": strconv.FormatBool(c.Inactive), "dependent_value": "",
		}
		old := sc.rows[id]
		var r *row
		if old == nil {
			r = sc.newRow()
			for n, v := range map[string]string{"sys_id": id, "sys_created_on": stamp, "sys_created_by": "admin", "sys_mod_count": "0"} {
				r.vals[sc.s.idx(n)] = v
			}
		} else {
			r = old.clone()
		}
		changed := old == nil
		for n, v := range want {
			if i := sc.s.idx(n); r.vals[i] != v {
				r.vals[i] = v
				changed = true
			}
		}
		if !changed {
			continue
		}
		if old != nil {
			n, _ := strconv.Atoi(sc.get("sys_mod_count", old))
			r.vals[sc.s.idx("sys_mod_count")] = strconv.Itoa(n + 1)
		}
		r.vals[sc.s.idx("sys_updated_on")] = stamp
		r.vals[sc.s.idx("sys_updated_by")] = "admin"
		sc.put(r)
	}
	iName, iEl := sc.s.idx("name"), sc.s.idx("element")
	var gone []string
	for id, r := range sc.rows {
		if r.vals[iName] == table && r.vals[iEl] == f.name && !keep[id] {
			gone = append(gone, id)
		}
	}
	for _, id := range gone {
		sc.remove(id)
	}
}

// seedChoices writes the sys_choice rows of every choice field. A field's
// rows are filed under the table that serves it (incident's state, impact,
// ... are incident's rows, as incident overrides task's lists).
func (s *Server) seedChoices() {
	for _, t := range s.tables {
		for _, f := range t.s.fields {
			if f.choices != nil {
				s.syncChoicesLocked(t.s.name, f, createdStamp)
			}
		}
	}
}

// choiceField finds a choice field; the caller holds s.mu.
func (s *Server) choiceField(table, element string) (*field, error) {
	t := s.tables[table]
	if t == nil {
		return nil, fmt.Errorf("snsim: no table %q", table)
	}
	f, _, ok := t.s.field(element)
	if !ok || f.choices == nil {
		return nil, fmt.Errorf("snsim: %s.%s is not a choice field", table, element)
	}
	return f, nil
}

// SetChoices replaces the choice list of table.element (as an admin editing
// sys_choice would): labels, sequences and the sys_choice rows follow. The
// values must be distinct and not empty.
func (s *Server) SetChoices(table, element string, choices []Choice) error {
	seen := map[string]bool{}
	for i, c := range choices {
		if c.Value == "" {
			return fmt.Errorf("snsim: choice #%d of %s.%s has no value", i+1, table, element)
		}
		if seen[c.Value] {
			return fmt.Errorf("snsim: choice %q of %s.%s is listed twice", c.Value, table, element)
		}
		seen[c.Value] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f, err := s.choiceField(table, element)
	if err != nil {
		return err
	}
	f.setChoices(append([]Choice{}, choices...))
	s.syncChoicesLocked(table, f, s.nowStamp())
	return nil
}

// SetChoiceInactive marks one choice of table.element inactive (or active
// again): it stays in sys_choice with inactive=true, still labels stored
// values, and is dropped from writes of a strict field.
func (s *Server) SetChoiceInactive(table, element, value string, inactive bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, err := s.choiceField(table, element)
	if err != nil {
		return err
	}
	cs := slices.Clone(f.choices)
	i := slices.IndexFunc(cs, func(c Choice) bool { return c.Value == value })
	if i < 0 {
		return fmt.Errorf("snsim: %q is not a choice of %s.%s", value, table, element)
	}
	cs[i].Inactive = inactive
	f.setChoices(cs)
	s.syncChoicesLocked(table, f, s.nowStamp())
	return nil
}

// Choices returns the choice list of table.element in sequence order
// (inactive ones included), or nil when it is not a choice field.
func (s *Server) Choices(table, element string) []Choice {
	s.mu.RLock()
	defer s.mu.RUnlock()
	f, err := s.choiceField(table, element)
	if err != nil {
		return nil
	}
	return slices.Clone(f.choices)
}
