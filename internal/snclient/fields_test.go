package snclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nowbridge/nowbridge/internal/snsim"
)

// incidentMapping is what bridge serve declares for incident: the built-in
// mapping's ServiceNow fields (both directions, link and close fields).
var incidentMapping = []string{"close_code", "close_notes", "comments", "correlation_display", "correlation_id", "description",
	"impact", "number", "priority", "short_description", "state", "urgency", "work_notes"}

// logBuffer collects a client's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) count(s string) int { return strings.Count(l.String(), s) }

func withLog(logs *logBuffer) func(*Config) {
	return func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
}

// sent reports whether the simulator received a request whose query string
// contains s.
func sent(sim *snsim.Server, s string) bool {
	for _, r := range sim.Requests() {
		if strings.Contains(r.Query, s) {
			return true
		}
	}
	return false
}

func TestFields_DictionaryHiddenLearnedFromARecordAndTheMapping(t *testing.T) {
	sim, c := newSim(t, 5, snsim.Config{}, func(c *Config) {
		c.MappedFields = map[string][]string{"incident": incidentMapping}
	})
	ctx := context.Background()
	fi, err := c.FieldInfo(ctx, "incident")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Record != ProbeRead || fi.Dictionary != ProbeHidden || fi.DictionaryTotal <= 0 || !fi.Complete {
		t.Fatalf("record %s, sys_dictionary %s (X-Total-Count %d), complete %v: want the record read and the dictionary hidden with a count",
			fi.Record, fi.Dictionary, fi.DictionaryTotal, fi.Complete)
	}
	if got := fi.Sources(); !slices.Equal(got, []string{FieldSourceMapping, FieldSourceRecord}) {
		t.Errorf("sources = %v, want mapping and record", got)
	}
	for _, f := range []string{"caller_id", "assignment_group", "opened_at", "close_code", "work_notes", "sys_updated_on"} {
		if !slices.Contains(fi.Names, f) {
			t.Errorf("%s not learned (the record read should show every field the user may read): %v", f, fi.Names)
		}
	}
	if len(fi.Unconfirmed) != 0 || fi.Missing() != "" {
		t.Errorf("every mapped field is in the record, yet unconfirmed %v, missing %q", fi.Unconfirmed, fi.Missing())
	}
	if got := testutil.ToFloat64(c.m.fieldsLearned.WithLabelValues("incident", FieldSourceRecord)); got != float64(len(fi.BySource[FieldSourceRecord])) || got < 20 {
		t.Errorf("bridge_servicenow_fields_learned{source=record} = %v", got)
	}
	if got := testutil.ToFloat64(c.m.learningIncomplete.WithLabelValues("incident")); got != 0 {
		t.Errorf("bridge_servicenow_field_learning_incomplete = %v, want 0", got)
	}

	// Writes of mapped fields go through; the returned record is real.
	id := sim.IDs("incident")[0]
	rec, err := c.Update(ctx, "incident", id, map[string]string{"short_description": "VPN down", "urgency": "1", "work_notes": "looked at it"})
	if err != nil || rec["short_description"] != "VPN down" {
		t.Fatalf("update: %v %v", rec, err)
	}
	created, err := c.Create(ctx, "incident", map[string]string{"short_description": "Printer on fire", "correlation_id": "TCK-9"})
	if err != nil || created["correlation_id"] != "TCK-9" {
		t.Fatalf("create: %v %v", created, err)
	}
	if got, err := c.FindByCorrelation(ctx, "incident", "correlation_id", "TCK-9"); err != nil || got != created["sys_id"] {
		t.Errorf("find by correlation_id: %q %v", got, err)
	}
	// The link field is the mapping's: the lookup queries the field given.
	if got, err := c.FindByCorrelation(ctx, "incident", "correlation_display", "TCK-9"); err != nil || got != "" {
		t.Errorf("find TCK-9 by correlation_display = %q %v, want none (it is in correlation_id)", got, err)
	}
	if _, err := c.FindByCorrelation(ctx, "incident", "", "TCK-9"); !errors.Is(err, ErrInvalidQuery) {
		t.Errorf("find without a link field: err = %v, want ErrInvalidQuery", err)
	}

	// A query naming a field that does not exist is refused, unsent.
	_, err = c.List(ctx, "incident", ListOptions{Query: And(Field("u_nonexistent").EQ("x"))})
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Incomplete || !slices.Equal(fe.Unknown, []string{"u_nonexistent"}) || !IsPermanent(err) {
		t.Fatalf("err = %v, want a permanent FieldError naming u_nonexistent", err)
	}
	if Hint(err) != HintUnknownOrHiddenField || !strings.Contains(err.Error(), "per mapping, record") {
		t.Errorf("without sys_dictionary the error must say the field may be unreadable: %v", err)
	}
	if sent(sim, "u_nonexistent") {
		t.Error("the query naming u_nonexistent reached the instance")
	}
	// So is a write of a field that no record shows and the mapping does not name.
	if _, err := c.Update(ctx, "incident", id, map[string]string{"short_descripton": "typo"}); !errors.As(err, &fe) || !fe.Write || !IsPermanent(err) {
		t.Errorf("write of a misspelt unmapped field: %v", err)
	}
}

func TestFields_EmptyTableAndHiddenDictionary(t *testing.T) {
	logs := &logBuffer{}
	sim, c := newSim(t, 0, snsim.Config{}, func(c *Config) {
		withLog(logs)(c)
		c.MappedFields = map[string][]string{"incident": {"number", "short_description", "state", "correlation_id"}}
		c.KnownFields = map[string][]string{"incident": {"caller_id"}}
	})
	ctx := context.Background()
	fi, err := c.FieldInfo(ctx, "incident")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Record != ProbeEmpty || fi.Dictionary != ProbeHidden || fi.Complete {
		t.Fatalf("record %s, sys_dictionary %s, complete %v: want empty, hidden, incomplete", fi.Record, fi.Dictionary, fi.Complete)
	}
	if got := fi.Sources(); !slices.Equal(got, []string{FieldSourceMapping, FieldSourceKnown}) {
		t.Errorf("sources = %v, want mapping and known_fields", got)
	}
	for _, f := range []string{"number", "correlation_id", "caller_id", "sys_id", "sys_updated_on"} {
		if !slices.Contains(fi.Names, f) {
			t.Errorf("%s missing from %v", f, fi.Names)
		}
	}
	missing := fi.Missing()
	for _, want := range []string{"incident is empty", "sys_dictionary is not readable", "personalize_dictionary", "BRIDGE_SN_KNOWN_FIELDS"} {
		if !strings.Contains(missing, want) {
			t.Errorf("Missing() = %q, does not say %q", missing, want)
		}
	}
	if got := testutil.ToFloat64(c.m.learningIncomplete.WithLabelValues("incident")); got != 1 {
		t.Errorf("bridge_servicenow_field_learning_incomplete = %v, want 1", got)
	}
	if got := testutil.ToFloat64(c.m.fieldsLearned.WithLabelValues("incident", FieldSourceKnown)); got != 1 {
		t.Errorf("bridge_servicenow_fields_learned{source=known_fields} = %v, want 1", got)
	}

	// Known and mapped fields are queried; repeated calls learn nothing again.
	for range 3 {
		p, err := c.List(ctx, "incident", ListOptions{Query: And(Field("caller_id").IsNotEmpty(), Field("correlation_id").EQ("TCK-1"))})
		if err != nil || len(p.Records) != 0 {
			t.Fatalf("query on known and mapped fields: %+v %v", p, err)
		}
	}
	if n := logs.count("are only partly known"); n != 1 {
		t.Errorf("%d incomplete-learning warnings, want 1 per learning:\n%s", n, logs)
	}
	if n := sim.RequestCount(http.MethodGet, "/api/now/table/sys_dictionary", 0); n != 1 {
		t.Errorf("sys_dictionary read %d times, want once (cached)", n)
	}

	// A query on a field not known, while the table is empty, answers empty
	// without sending it (nothing can match rows that do not exist).
	p, err := c.List(ctx, "incident", ListOptions{Query: And(Field("urgency").EQ("1"))})
	if err != nil || len(p.Records) != 0 || p.HasNext {
		t.Fatalf("query on an unknown field of an empty table: %+v %v", p, err)
	}
	if sent(sim, "urgency") {
		t.Error("the query on urgency was sent although its field is not known")
	}

	// Learning never blocks a write: an unverified field is written too.
	rec, err := c.Create(ctx, "incident", map[string]string{"short_description": "Email down", "correlation_id": "TCK-1", "urgency": "1"})
	if err != nil || rec["urgency"] != "1" {
		t.Fatalf("create while learning is incomplete: %v %v", rec, err)
	}
	// The returned record taught the table's fields.
	fi, _ = c.FieldInfo(ctx, "incident")
	if !fi.Complete || fi.Record != ProbeRead || !slices.Contains(fi.Names, "urgency") {
		t.Fatalf("after the first write: complete %v, record %s, urgency known %v", fi.Complete, fi.Record, slices.Contains(fi.Names, "urgency"))
	}
	if got := testutil.ToFloat64(c.m.learningIncomplete.WithLabelValues("incident")); got != 0 {
		t.Errorf("bridge_servicenow_field_learning_incomplete = %v after a record was written, want 0", got)
	}
	p, err = c.List(ctx, "incident", ListOptions{Query: And(Field("urgency").EQ("1"))})
	if err != nil || len(p.Records) != 1 {
		t.Fatalf("query on urgency once learned: %+v %v", p, err)
	}
	if _, err := c.List(ctx, "incident", ListOptions{Query: And(Field("u_nonexistent").EQ("x"))}); !errors.Is(err, ErrInvalidQuery) {
		t.Errorf("a query on a field that does not exist, fields now known: %v", err)
	}
}

func TestFields_EmptyTableLearnsFromARecordCreatedInServiceNow(t *testing.T) {
	sim, c := newSim(t, 0, snsim.Config{}, nil)
	ctx := context.Background()
	if fi, _ := c.FieldInfo(ctx, "incident"); fi.Complete {
		t.Fatal("an empty table with sys_dictionary hidden cannot be complete")
	}
	if _, err := sim.Insert("incident", map[string]string{"short_description": "created by a person", "urgency": "2"}, "beth.anglin"); err != nil {
		t.Fatal(err)
	}
	// The record is found: the table is read again, its fields learned,
	// and the query sent (not answered empty from a stale "empty").
	p, err := c.List(ctx, "incident", ListOptions{Query: And(Field("urgency").EQ("2"))})
	if err != nil || len(p.Records) != 1 {
		t.Fatalf("query after a record appeared: %+v %v", p, err)
	}
	if fi, _ := c.FieldInfo(ctx, "incident"); !fi.Complete || fi.Record != ProbeRead {
		t.Errorf("record %s, complete %v after the table was read again", fi.Record, fi.Complete)
	}
}

func TestFields_DictionaryGrantedIsAddedToTheRecord(t *testing.T) {
	sim, c := newSim(t, 5, snsim.Config{Grants: snsim.Grants{Dictionary: true}}, func(c *Config) {
		c.MappedFields = map[string][]string{"incident": incidentMapping}
	})
	// A field ACL hides caller_id from records; the dictionary still lists it.
	sim.SetACL(snsim.ACL{HiddenFields: map[string][]string{"incident": {"caller_id"}}})
	ctx := context.Background()
	fi, err := c.FieldInfo(ctx, "incident")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Record != ProbeRead || fi.Dictionary != ProbeRead {
		t.Fatalf("record %s, sys_dictionary %s: want both read", fi.Record, fi.Dictionary)
	}
	if got := fi.Sources(); !slices.Equal(got, []string{FieldSourceMapping, FieldSourceRecord, FieldSourceDictionary}) {
		t.Errorf("sources = %v", got)
	}
	if slices.Contains(fi.BySource[FieldSourceRecord], "caller_id") || !slices.Contains(fi.BySource[FieldSourceDictionary], "caller_id") || !slices.Contains(fi.Names, "caller_id") {
		t.Errorf("caller_id: in the record %v, in the dictionary %v, known %v; want only the dictionary to list it, and the union to hold it",
			slices.Contains(fi.BySource[FieldSourceRecord], "caller_id"), slices.Contains(fi.BySource[FieldSourceDictionary], "caller_id"), slices.Contains(fi.Names, "caller_id"))
	}
	// task's fields come through the parent table.
	if !slices.Contains(fi.BySource[FieldSourceDictionary], "short_description") {
		t.Error("the dictionary read did not include incident's parent, task")
	}
	// With the dictionary the query on the hidden field is sent, and
	// ServiceNow's own 403 says what to do.
	_, err = c.List(ctx, "incident", ListOptions{Query: And(Field("caller_id").IsNotEmpty())})
	if !errors.Is(err, ErrForbidden) || Hint(err) != HintQueryRights || !IsPermanent(err) {
		t.Errorf("query on a field the user may not read: %v", err)
	}
	if n := testutil.ToFloat64(c.m.fieldsLearned.WithLabelValues("incident", FieldSourceDictionary)); n < 20 {
		t.Errorf("bridge_servicenow_fields_learned{source=sys_dictionary} = %v", n)
	}
}

func TestFields_KnownFieldsAddToTheLearnedOnes(t *testing.T) {
	sim, c := newSim(t, 5, snsim.Config{}, func(c *Config) {
		c.KnownFields = map[string][]string{"incident": {"caller_id"}}
	})
	sim.SetACL(snsim.ACL{HiddenFields: map[string][]string{"incident": {"caller_id"}}})
	ctx := context.Background()
	fi, err := c.FieldInfo(ctx, "incident")
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Complete || !slices.Contains(fi.Names, "state") || !slices.Contains(fi.Names, "caller_id") {
		t.Fatalf("complete %v; state and caller_id must both be known: %v", fi.Complete, fi.Names)
	}
	if got := fi.Sources(); !slices.Equal(got, []string{FieldSourceRecord, FieldSourceKnown}) {
		t.Errorf("sources = %v, want record and known_fields", got)
	}
	// The configured field is queried: ServiceNow's answer (here a 403,
	// the user may not read it) is the truth, not a guess of the client.
	_, err = c.List(ctx, "incident", ListOptions{Query: And(Field("caller_id").IsNotEmpty())})
	if !errors.Is(err, ErrForbidden) || Hint(err) != HintQueryRights {
		t.Errorf("query on a configured known field: %v", err)
	}
	// Without the setting the same query is refused before it is sent,
	// saying the field may exist but be unreadable.
	_, c2 := newSim(t, 5, snsim.Config{}, nil)
	_, err = c2.List(ctx, "incident", ListOptions{Query: And(Field("u_custom").IsNotEmpty())})
	if !errors.Is(err, ErrInvalidQuery) || !strings.Contains(Hint(err), "BRIDGE_SN_KNOWN_FIELDS") {
		t.Errorf("query on a field neither learned nor configured: %v", err)
	}
}

// failingLists answers 503 to every GET list of table while fail is set;
// everything else reaches the simulator.
func failingLists(sim *snsim.Server, table string, fail func() bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail() && r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/table/"+table) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"error":{"message":"Service Unavailable","detail":null},"status":"failure"}`)
			return
		}
		sim.ServeHTTP(w, r)
	})
}

func TestFields_LearningThatFailsNeverBlocksAWrite(t *testing.T) {
	sim := snsim.New(snsim.Config{ClientID: "bridge", ClientSecret: "sim-secret-value", Seed: 7})
	t.Cleanup(sim.Close)
	if err := sim.Seed(3); err != nil {
		t.Fatal(err)
	}
	// Every list of incident fails: the record read cannot teach anything.
	hs := httptest.NewServer(failingLists(sim, "incident", func() bool { return true }))
	t.Cleanup(hs.Close)
	newClient := func(logs *logBuffer) *Client {
		return newTestClient(t, Config{
			InstanceURL: hs.URL, ClientID: "bridge", ClientSecret: "sim-secret-value",
			RetryInitial: 5 * time.Millisecond, RetryMax: 20 * time.Millisecond, RetryMaxElapsed: 200 * time.Millisecond,
			// The failing reads are real 503s; the breaker would stop the
			// write too, which is not what this test is about.
			BreakerFailures: 1000,
			MappedFields:    map[string][]string{"incident": {"short_description", "state"}},
			Logger:          slog.New(slog.NewTextHandler(logs, nil)),
		})
	}
	ctx := context.Background()
	id := sim.IDs("incident")[0]

	logs := &logBuffer{}
	c := newClient(logs)
	rec, err := c.Update(ctx, "incident", id, map[string]string{"short_description": "still written", "urgency": "2"})
	if err != nil || rec["short_description"] != "still written" || rec["urgency"] != "2" {
		t.Fatalf("write while learning fails: %v %v", rec, err)
	}
	if !strings.Contains(logs.String(), "are only partly known: reading a record of incident failed") {
		t.Errorf("no warning naming the failed read:\n%s", logs)
	}
	// The written record taught the fields the failed read could not.
	if fi, _ := c.FieldInfo(ctx, "incident"); fi.Record != ProbeRead || !fi.Complete {
		t.Errorf("after a write: record %s, complete %v; want learned from the returned record", fi.Record, fi.Complete)
	}

	// A client that has written nothing: a query on a field not known gets
	// the (temporary) failure, not a FieldError, so a consumer retries it.
	c2 := newClient(&logBuffer{})
	if _, err := c2.GetRecord(ctx, "incident", id, ReadOptions{Fields: []string{"urgency"}}); err != nil {
		t.Errorf("a single read selecting a field not known, while learning fails: %v", err)
	}
	fi, _ := c2.FieldInfo(ctx, "incident")
	if fi.Record != ProbeFailed || !errors.Is(fi.RecordErr, ErrServer) || fi.Complete {
		t.Fatalf("record %s (%v), complete %v: want failed with the 503", fi.Record, fi.RecordErr, fi.Complete)
	}
	_, err = c2.List(ctx, "incident", ListOptions{Query: And(Field("urgency").EQ("1"))})
	var fe *FieldError
	if err == nil || errors.As(err, &fe) || IsPermanent(err) || !errors.Is(err, ErrServer) || !strings.Contains(err.Error(), "cannot check the field(s) urgency") {
		t.Errorf("query while learning fails: %v; want the temporary 503, saying the field could not be checked", err)
	}
}

func TestFields_WriteOfAFieldServiceNowIgnoresIsReported(t *testing.T) {
	logs := &logBuffer{}
	_, c := newSim(t, 0, snsim.Config{}, func(c *Config) {
		withLog(logs)(c)
		c.MappedFields = map[string][]string{"incident": {"short_description", "u_typo_field"}}
	})
	ctx := context.Background()
	// The mapped field passes (mapped fields always do), ServiceNow drops
	// it silently, and the client says so.
	if _, err := c.Create(ctx, "incident", map[string]string{"short_description": "x", "u_typo_field": "y"}); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(c.m.fieldsIgnored.WithLabelValues("incident")); got != 1 {
		t.Errorf("bridge_servicenow_write_fields_ignored_total = %v, want 1", got)
	}
	if !strings.Contains(logs.String(), "u_typo_field") || !strings.Contains(logs.String(), "check the mapping") {
		t.Errorf("no warning naming the ignored field:\n%s", logs)
	}
	fi, _ := c.FieldInfo(ctx, "incident")
	if !slices.Equal(fi.Unconfirmed, []string{"u_typo_field"}) || !strings.Contains(fi.Missing(), "u_typo_field") {
		t.Errorf("unconfirmed mapped fields %v, missing %q", fi.Unconfirmed, fi.Missing())
	}
}

func TestIsPermanent(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"403 missing role", &APIError{Status: 403, Hint: HintRoles}, true},
		{"403 data policy, wrapped", fmt.Errorf("update incident/x: %w", &APIError{Status: 403, Hint: HintDataPolicy}), true},
		{"400 invalid table", &APIError{Status: 400}, true},
		{"404 record gone", &APIError{Status: 404}, true},
		{"401 before a token refresh", &APIError{Status: 401}, false},
		{"401 with a fresh token (no application user)", &APIError{Status: 401, Hint: HintAppUser}, true},
		{"408", &APIError{Status: 408}, false},
		{"409", &APIError{Status: 409}, false},
		{"429", &APIError{Status: 429}, false},
		{"500", &APIError{Status: 500}, false},
		{"503", &APIError{Status: 503}, false},
		{"token refused (wrong secret)", &TokenError{Status: 401, Hint: HintTokenRejected}, true},
		{"token endpoint down", &TokenError{Status: 503, transient: true}, false},
		{"field error", &FieldError{Table: "incident", Unknown: []string{"x"}}, true},
		{"fields not learned", fmt.Errorf("list: %w", &FieldError{Table: "incident", Unknown: []string{"x"}, Incomplete: true}), true},
		{"refused input", fmt.Errorf("%w: %q is not a sys_id", ErrInvalidQuery, "x"), true},
		{"learning failed with a 503", fmt.Errorf("cannot check: %w", errors.Join(&APIError{Status: 503}, nil)), false},
		{"learning failed with a 403", fmt.Errorf("cannot check: %w", &APIError{Status: 403}), true},
		{"breaker open", &BreakerOpenError{OpenFor: time.Second}, false},
		{"deadline", context.DeadlineExceeded, false},
		{"deadline after a 503", fmt.Errorf("GET incident: %w (last attempt: %w)", context.DeadlineExceeded, &APIError{Status: 503}), false},
		{"closed", ErrClosed, false},
	} {
		if got := IsPermanent(tc.err); got != tc.want {
			t.Errorf("%s: IsPermanent(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

func TestSim_PermissionErrorsArePermanent(t *testing.T) {
	ctx := context.Background()
	t.Run("no itil: writes refused", func(t *testing.T) {
		sim, c := newSim(t, 1, snsim.Config{}, func(c *Config) { c.MappedFields = map[string][]string{"incident": incidentMapping} })
		sim.SetACL(snsim.ACL{NoRoles: true})
		_, err := c.Update(ctx, "incident", sim.IDs("incident")[0], map[string]string{"urgency": "1"})
		if !IsPermanent(err) || Hint(err) == "" {
			t.Errorf("write without itil: %v (permanent %v)", err, IsPermanent(err))
		}
	})
	t.Run("no application user", func(t *testing.T) {
		sim, c := newSim(t, 1, snsim.Config{}, nil)
		sim.SetOAuthMode(snsim.OAuthTokenNotAuthenticated)
		_, err := c.Get(ctx, "incident", sim.IDs("incident")[0])
		if !IsPermanent(err) || Hint(err) != HintAppUser {
			t.Errorf("API 401 with a fresh token: %v", err)
		}
	})
	t.Run("client-credentials grant disabled", func(t *testing.T) {
		sim, c := newSim(t, 0, snsim.Config{}, nil)
		sim.SetOAuthMode(snsim.OAuthGrantDisabled)
		if err := c.CheckAuth(ctx); !IsPermanent(err) || Hint(err) != HintTokenRejected {
			t.Errorf("token refused: %v", err)
		}
	})
	t.Run("data policy", func(t *testing.T) {
		sim, c := newSim(t, 1, snsim.Config{}, nil)
		_, err := c.Update(ctx, "incident", sim.IDs("incident")[0], map[string]string{"state": "6"})
		if !IsPermanent(err) || Hint(err) != HintDataPolicy {
			t.Errorf("resolve without a code: %v", err)
		}
	})
	t.Run("instance failing", func(t *testing.T) {
		sim, c := newSim(t, 1, snsim.Config{}, func(c *Config) { c.RetryMaxElapsed = 100 * time.Millisecond; c.SkipFieldValidation = true })
		if err := sim.SetFaults(snsim.Faults{ErrorRate: 1}); err != nil {
			t.Fatal(err)
		}
		_, err := c.Get(ctx, "incident", sim.IDs("incident")[0])
		if err == nil || IsPermanent(err) {
			t.Errorf("503s: %v, want a temporary error", err)
		}
	})
}

func TestFields_RowsHiddenFromTheUserAreNamedAsTheCause(t *testing.T) {
	sim, c := newSim(t, 5, snsim.Config{}, func(c *Config) {
		c.MappedFields = map[string][]string{"incident": {"number", "state"}}
	})
	sim.SetACL(snsim.ACL{NoRoles: true})
	ctx := context.Background()
	fi, err := c.FieldInfo(ctx, "incident")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Record != ProbeHidden || fi.RecordTotal != 5 || fi.Complete {
		t.Fatalf("record %s (X-Total-Count %d), complete %v: want hidden, 5 counted", fi.Record, fi.RecordTotal, fi.Complete)
	}
	if m := fi.Missing(); !strings.Contains(m, "counts 5, none returned") || !strings.Contains(m, "itil") {
		t.Errorf("Missing() = %q, want it to name the hidden rows and the role", m)
	}
	_, err = c.List(ctx, "incident", ListOptions{Query: And(Field("urgency").EQ("1"))})
	var fe *FieldError
	if !errors.As(err, &fe) || !fe.Incomplete || !IsPermanent(err) || Hint(err) != HintFieldsIncomplete {
		t.Errorf("query on a field not known while rows are hidden: %v", err)
	}
}
