package snsim

import (
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// activeChoices reads a field's active choices the way a client does.
func activeChoices(t *testing.T, h *harness, table, element string) []string {
	t.Helper()
	r := h.get("/api/now/v2/table/sys_choice", url.Values{
		"sysparm_query":  {"name=" + table + "^element=" + element + "^inactive=false^ORDERBYsequence^ORDERBYvalue"},
		"sysparm_fields": {"value,label,sequence"},
	})
	if r.status != 200 {
		t.Fatalf("sys_choice %s.%s: %d %s", table, element, r.status, r.body)
	}
	var out []string
	for _, row := range r.results(t) {
		if row["value"] != row["label"] && element == "close_code" {
			t.Errorf("close_code choice value %v has label %v; the platform's close codes are labelled with their value", row["value"], row["label"])
		}
		out = append(out, row["value"].(string))
	}
	return out
}

func TestChoices_ServedFromSysChoiceByRelease(t *testing.T) {
	current := []string{"Duplicate", "Known error", "No resolution provided", "Resolved by caller", "Resolved by change",
		"Resolved by problem", "Resolved by request", "Solution provided", "Workaround provided", "User error"}
	legacy := []string{"Solved (Work Around)", "Solved (Permanently)", "Solved Remotely (Work Around)", "Solved Remotely (Permanently)",
		"Not Solved (Not Reproducible)", "Not Solved (Too Costly)", "Closed/Resolved by Caller"}
	tests := []struct {
		name string
		cfg  Config
		acl  ACL
		want []string
	}{
		{"current release (default)", Config{}, ACL{}, current},
		{"older release", Config{LegacyCloseCodes: true}, ACL{}, legacy},
		{"readable without itil", Config{}, ACL{NoRoles: true}, current},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.cfg)
			h.sim.SetACL(tt.acl)
			if got := activeChoices(t, h, "incident", "close_code"); !slices.Equal(got, tt.want) {
				t.Errorf("close_code choices\n got  %q\n want %q", got, tt.want)
			}
		})
	}
	h := newHarness(t, Config{})
	for element, want := range map[string][]string{
		"state": {"1", "2", "3", "6", "7", "8"}, "impact": {"1", "2", "3"}, "urgency": {"1", "2", "3"},
		"priority": {"1", "2", "3", "4", "5"}, "hold_reason": {"1", "3", "4", "5"},
	} {
		if got := activeChoices(t, h, "incident", element); !slices.Equal(got, want) {
			t.Errorf("incident.%s choices %q, want %q", element, got, want)
		}
	}
	row := h.get("/api/now/table/sys_choice", url.Values{"sysparm_query": {"name=incident^element=state^value=6"}}).results(t)
	if len(row) != 1 || row[0]["label"] != "Resolved" || row[0]["language"] != "en" || row[0]["inactive"] != "false" || row[0]["sequence"] == "" {
		t.Errorf("sys_choice row of incident.state=6: %v; want label Resolved, language en, inactive false, a sequence", row)
	}
	if r := h.do("POST", "/api/now/table/sys_choice", `{"name":"incident","element":"close_code","value":"Mine"}`); r.status != 403 {
		t.Errorf("the integration user wrote sys_choice: %d %s", r.status, r.body)
	}
}

func TestChoices_InactiveAndReplacedLists(t *testing.T) {
	h := newHarness(t, Config{Now: newClock().Now})
	if err := h.sim.SetChoiceInactive("incident", "close_code", "Solution provided", true); err != nil {
		t.Fatal(err)
	}
	if got := activeChoices(t, h, "incident", "close_code"); slices.Contains(got, "Solution provided") || len(got) != 9 {
		t.Errorf("active close codes after deactivating Solution provided: %q", got)
	}
	row := h.get("/api/now/table/sys_choice", url.Values{"sysparm_query": {"element=close_code^value=Solution provided"}}).results(t)
	if len(row) != 1 || row[0]["inactive"] != "true" || row[0]["sys_mod_count"] != "1" {
		t.Errorf("deactivated row %v; want it kept with inactive true and sys_mod_count 1", row)
	}
	id := insertN(t, h.sim, 1)[0]
	r := h.do("PATCH", "/api/now/table/incident/"+id, `{"state":"6","close_code":"Solution provided","close_notes":"done"}`)
	if r.status != 403 || !strings.HasSuffix(errorDetail(t, r), "mandatory: Resolution code") {
		t.Errorf("resolve with an inactive code: %d %s; want 403 naming Resolution code", r.status, r.body)
	}

	if err := h.sim.SetChoices("incident", "close_code", []Choice{{Value: "Fixed", Label: "Fixed", Sequence: 1}, {Value: "Duplicate", Label: "Duplicate", Sequence: 2}}); err != nil {
		t.Fatal(err)
	}
	if got := activeChoices(t, h, "incident", "close_code"); !slices.Equal(got, []string{"Fixed", "Duplicate"}) {
		t.Errorf("replaced list reads %q", got)
	}
	if got := h.sim.Choices("incident", "close_code"); len(got) != 2 || got[0].Value != "Fixed" {
		t.Errorf("Choices() = %v", got)
	}
	for _, bad := range []struct {
		table, element string
		cs             []Choice
	}{
		{"incident", "short_description", []Choice{{Value: "x"}}},
		{"nope", "state", []Choice{{Value: "x"}}},
		{"incident", "close_code", []Choice{{Value: ""}}},
		{"incident", "close_code", []Choice{{Value: "a"}, {Value: "a"}}},
	} {
		if err := h.sim.SetChoices(bad.table, bad.element, bad.cs); err == nil {
			t.Errorf("SetChoices(%s, %s, %v) accepted", bad.table, bad.element, bad.cs)
		}
	}
	if err := h.sim.SetChoiceInactive("incident", "close_code", "Solution provided", false); err == nil {
		t.Error("SetChoiceInactive accepted a value that is no longer a choice")
	}
}

func errorDetail(t *testing.T, r response) string {
	t.Helper()
	var env struct {
		Error struct {
			Detail *string `json:"detail"`
		} `json:"error"`
	}
	if err := json.Unmarshal(r.body, &env); err != nil || env.Error.Detail == nil {
		t.Fatalf("no error detail in %s", r.body)
	}
	return *env.Error.Detail
}

// TestWrite_CloseCodeDroppedThenDataPolicy: a close_code that is not an
// active choice is dropped silently; the data policy then judges the
// record as the write leaves it and names only the fields missing.
func TestWrite_CloseCodeDroppedThenDataPolicy(t *testing.T) {
	const policy = "Data Policy Exception: \n\tThe following fields are mandatory: "
	tests := []struct {
		name   string
		cfg    Config
		before map[string]string // the record's values, written directly first
		patch  string
		status int
		detail string            // of a 403
		stored map[string]string // values after a 200
	}{
		{name: "valid code and notes", patch: `{"state":"6","close_code":"Solution provided","close_notes":"n"}`, status: 200,
			stored: map[string]string{"state": "6", "close_code": "Solution provided", "close_notes": "n"}},
		{name: "retired code is dropped, then refused", patch: `{"state":"6","close_code":"Solved (Permanently)","close_notes":"n"}`,
			status: 403, detail: policy + "Resolution code"},
		{name: "nothing sent", patch: `{"state":"7"}`, status: 403, detail: policy + "Resolution code, Resolution notes"},
		{name: "notes missing", patch: `{"state":"6","close_code":"Duplicate"}`, status: 403, detail: policy + "Resolution notes"},
		{name: "invalid code outside a close is dropped, the rest written", patch: `{"close_code":"Bogus","short_description":"renamed"}`, status: 200,
			stored: map[string]string{"close_code": "", "short_description": "renamed"}},
		{name: "close fields already on the record", before: map[string]string{"state": "6", "close_code": "Known error", "close_notes": "n"},
			patch: `{"state":"7"}`, status: 200, stored: map[string]string{"state": "7", "close_code": "Known error", "active": "false"}},
		{name: "clearing the notes of a resolved record", before: map[string]string{"state": "6", "close_code": "Known error", "close_notes": "n"},
			patch: `{"close_notes":""}`, status: 403, detail: policy + "Resolution notes"},
		{name: "older release accepts its codes", cfg: Config{LegacyCloseCodes: true}, patch: `{"state":"6","close_code":"Solved (Permanently)","close_notes":"n"}`,
			status: 200, stored: map[string]string{"close_code": "Solved (Permanently)"}},
		{name: "older release drops current codes", cfg: Config{LegacyCloseCodes: true}, patch: `{"state":"6","close_code":"Solution provided","close_notes":"n"}`,
			status: 403, detail: policy + "Resolution code"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.cfg)
			id := insertN(t, h.sim, 1)[0]
			if tt.before != nil {
				if _, err := h.sim.UpdateNoWorkflow("incident", id, tt.before, "beth.anglin"); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := h.sim.Get("incident", id)
			r := h.do("PATCH", "/api/now/table/incident/"+id, tt.patch)
			if r.status != tt.status {
				t.Fatalf("PATCH %s: %d %s, want %d", tt.patch, r.status, r.body, tt.status)
			}
			after, _ := h.sim.Get("incident", id)
			if tt.status == 403 {
				if msg := r.json(t)["error"].(map[string]any)["message"]; msg != "Operation Failed" || errorDetail(t, r) != tt.detail {
					t.Errorf("refusal: message %v detail %q, want Operation Failed and %q", msg, errorDetail(t, r), tt.detail)
				}
				if after["sys_mod_count"] != before["sys_mod_count"] || after["state"] != before["state"] {
					t.Errorf("a refused write changed the record: %v -> %v", before, after)
				}
				return
			}
			for k, v := range tt.stored {
				if after[k] != v {
					t.Errorf("%s = %q after the write, want %q", k, after[k], v)
				}
			}
		})
	}
}

// TestWrite_DirectWritesFollowTheSameRules: a script's write (the direct
// test API) is held to the choices and the data policy like an API write.
func TestWrite_DirectWritesFollowTheSameRules(t *testing.T) {
	h := newHarness(t, Config{})
	id := insertN(t, h.sim, 1)[0]
	_, err := h.sim.Update("incident", id, map[string]string{"state": "6", "close_code": "Solved (Permanently)", "close_notes": "n"}, "beth.anglin")
	if err == nil || !strings.Contains(err.Error(), "mandatory: Resolution code") {
		t.Errorf("direct resolve with a retired code: %v; want the data policy's refusal", err)
	}
	if _, err := h.sim.Update("incident", id, map[string]string{"state": "6", "close_code": "User error", "close_notes": "n"}, "beth.anglin"); err != nil {
		t.Errorf("direct resolve with a current code: %v", err)
	}
}

// TestSeed_UsesTheInstancesCloseCodes: seeded resolved records carry codes
// the instance offers, in either release.
func TestSeed_UsesTheInstancesCloseCodes(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		s := New(Config{Seed: 7, LegacyCloseCodes: legacy})
		if err := s.Seed(300); err != nil {
			t.Fatal(err)
		}
		valid := map[string]bool{}
		for _, c := range s.Choices("incident", "close_code") {
			valid[c.Value] = true
		}
		resolved := 0
		for _, id := range s.IDs("incident") {
			r, _ := s.Get("incident", id)
			if r["state"] == "6" || r["state"] == "7" {
				resolved++
				if !valid[r["close_code"]] || r["close_notes"] == "" {
					t.Errorf("legacy=%v: seeded %s in state %s with close_code %q notes %q", legacy, r["number"], r["state"], r["close_code"], r["close_notes"])
				}
			}
		}
		if resolved == 0 {
			t.Errorf("legacy=%v: no resolved record among 300 seeded", legacy)
		}
		s.Close()
	}
}
