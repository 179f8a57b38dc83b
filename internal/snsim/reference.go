package snsim

import (
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// stableID derives a sys_id from a name, so reference data has the same ids
// on every run (golden files, docs).
func stableID(kind, name string) string {
	h := sha256.Sum256([]byte(kind + ":" + name))
	return hex.EncodeToString(h[:16])
}

// demoUsers are the people of a fresh developer instance.
var demoUsers = [][2]string{
	{"admin", "System Administrator"},
	{"beth.anglin", "Beth Anglin"},
	{"abel.tuter", "Abel Tuter"},
	{"fred.luddy", "Fred Luddy"},
	{"david.loo", "David Loo"},
	{"don.goodliffe", "Don Goodliffe"},
	{"itil", "ITIL User"},
	{"bud.richman", "Bud Richman"},
	{"charlie.whitherspoon", "Charlie Whitherspoon"},
	{"luke.wilson", "Luke Wilson"},
}

var demoGroups = []string{"Service Desk", "Network", "Hardware", "Software", "Database"}

const createdStamp = "2026-01-01 00:00:00"

// seedReference creates sys_user (the demo users and the application user)
// and sys_user_group.
func (s *Server) seedReference() {
	users := s.tables["sys_user"]
	add := func(login, name string) {
		r := users.newRow()
		first, last, _ := strings.Cut(name, " ")
		for n, v := range map[string]string{
			"sys_id": stableID("sys_user", login), "sys_created_on": createdStamp, "sys_created_by": "admin",
			"sys_updated_on": createdStamp, "sys_updated_by": "admin", "sys_mod_count": "0",
			"user_name": login, "name": name, "first_name": first, "last_name": last,
			"email": login + "@example.com", "active": "true",
		} {
			r.vals[users.s.idx(n)] = v
		}
		users.put(r)
		s.users[login] = r
	}
	for _, u := range demoUsers {
		add(u[0], u[1])
	}
	if _, ok := s.users[s.cfg.AppUser]; !ok {
		add(s.cfg.AppUser, displayFromLogin(s.cfg.AppUser))
	}
	groups := s.tables["sys_user_group"]
	for _, g := range demoGroups {
		r := groups.newRow()
		for n, v := range map[string]string{
			"sys_id": stableID("sys_user_group", g), "sys_created_on": createdStamp, "sys_created_by": "admin",
			"sys_updated_on": createdStamp, "sys_updated_by": "admin", "sys_mod_count": "0",
			"name": g, "description": g + " group", "active": "true",
		} {
			r.vals[groups.s.idx(n)] = v
		}
		groups.put(r)
	}
}

// displayFromLogin turns "nowbridge.integration" into "Nowbridge Integration".
func displayFromLogin(login string) string {
	parts := strings.FieldsFunc(login, func(r rune) bool { return r == '.' || r == '_' })
	for i, p := range parts {
		parts[i] = strings.ToUpper(p[:1]) + p[1:]
	}
	return strings.Join(parts, " ")
}

// userID is the sys_id of a user name ("" for unknown users, as a
// reference to nobody).
func (s *Server) userID(login string) string {
	if r, ok := s.users[login]; ok {
		return r.vals[s.tables["sys_user"].iID]
	}
	return ""
}

// userDisplayLocked is the name a journal entry shows for a user name.
func (s *Server) userDisplayLocked(login string) string {
	if r, ok := s.users[login]; ok {
		return r.vals[s.tables["sys_user"].s.idx("name")]
	}
	return login
}

// seedDictionary writes sys_dictionary rows for every table: one
// collection row (empty element) and one per field, on the table that
// defines it (the ticket tables' inherited fields are task's rows, written
// once, from the first table in name order: labels a table overrides, such
// as incident's "Resolution notes", are not task's).
func (s *Server) seedDictionary() {
	d := s.tables["sys_dictionary"]
	add := func(tableName, element, label, typ, ref string, maxLen int, readOnly bool) {
		r := d.newRow()
		for n, v := range map[string]string{
			"sys_id": stableID("sys_dictionary", tableName+"."+element), "sys_created_on": createdStamp, "sys_created_by": "admin",
			"sys_updated_on": createdStamp, "sys_updated_by": "admin", "sys_mod_count": "0",
			"name": tableName, "element": element, "column_label": label, "internal_type": typ,
			"max_length": strconv.Itoa(maxLen), "reference": ref, "read_only": strconv.FormatBool(readOnly), "active": "true",
		} {
			r.vals[d.s.idx(n)] = v
		}
		if _, dup := d.rows[r.id(d)]; !dup {
			d.put(r)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(s.tables)) {
		t := s.tables[name]
		add(t.s.name, "", t.s.label, "collection", "", 40, false)
		if t.s.parent != "" {
			add(t.s.parent, "", labelOf(t.s.parent), "collection", "", 40, false)
		}
		for _, f := range t.s.fields {
			add(f.definedOn, f.name, f.label, f.internalType(), f.ref, f.maxLen, f.system)
		}
	}
}
