package snclient

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestQuery_Encode(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 1, 2, 3, 0, time.FixedZone("CET", 3600))
	id := "9d385017c611228701d22104cc95c371"
	tests := []struct {
		name string
		q    Query
		want string
	}{
		{"zero", Query{}, ""},
		{"eq", And(Field("active").EQ(true)), "active=true"},
		{"time in UTC", And(Field("sys_updated_on").GTE(t0)), "sys_updated_on>=2026-03-01 00:02:03"},
		{"all comparisons", And(Field("a").NEQ(1), Field("b").GT(2), Field("c").LT(3), Field("d").LTE(int64(4))), "a!=1^b>2^c<3^d<=4"},
		{"in", And(Field("state").In(1, "2", 3)), "stateIN1,2,3"},
		{"not in", And(Field("state").NotIn(6, 7)), "stateNOT IN6,7"},
		{"like starts ends", And(Field("short_description").Like("mail"), Field("number").StartsWith("INC"), Field("x").EndsWith("z")), "short_descriptionLIKEmail^numberSTARTSWITHINC^xENDSWITHz"},
		{"empty", And(Field("assigned_to").IsEmpty(), Field("correlation_id").IsNotEmpty()), "assigned_toISEMPTY^correlation_idISNOTEMPTY"},
		{"between", And(Field("priority").Between(1, 3)), "priorityBETWEEN1@3"},
		{"caret escaped", And(Field("short_description").EQ("a^b^ORc")), "short_description=a^^b^^ORc"},
		{"or group binds conditions", And(Or(Field("state").EQ(1), Field("state").EQ(2)), Field("active").EQ(true)), "state=1^ORstate=2^active=true"},
		{"or after and", And(Field("active").EQ(true), Or(Field("a").EQ(1), Field("b").EQ(2))), "active=true^a=1^ORb=2"},
		{"order", And(Field("active").EQ(true)).OrderBy("sys_updated_on").OrderByDesc("number"), "active=true^ORDERBYsys_updated_on^ORDERBYDESCnumber"},
		{"order only", Query{}.OrderBy("sys_id"), "ORDERBYsys_id"},
		{"dot walk", And(Field("caller_id.name").EQ("Beth")), "caller_id.name=Beth"},
		{"nq carries order in each part",
			NQ(And(Field("sys_updated_on").GT(t0)), And(Field("sys_updated_on").EQ(t0), Field("sys_id").GT(id))).OrderBy("sys_updated_on").OrderBy("sys_id"),
			"sys_updated_on>2026-03-01 00:02:03^ORDERBYsys_updated_on^ORDERBYsys_id^NQsys_updated_on=2026-03-01 00:02:03^sys_id>" + id + "^ORDERBYsys_updated_on^ORDERBYsys_id"},
		{"chained and", And(Field("a").EQ(1)).And(Field("b").EQ(2)), "a=1^b=2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.q.Err(); err != nil {
				t.Fatalf("Err() = %v", err)
			}
			if got := tt.q.Encode(); got != tt.want {
				t.Errorf("Encode()\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

// The facts file's trap: sys_updated_on>T^ORsys_updated_on=T^sys_id>ID means
// (> OR =) AND sys_id>ID and drops later rows with smaller ids. The keyset
// pager must never produce it: it uses two plain AND queries.
func TestKeysetQueries_NotTheWrongPrecedenceForm(t *testing.T) {
	c := &Client{cfg: Config{PageSize: 10}.withDefaults()}
	at := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
	id := "9d385017c611228701d22104cc95c371"
	p := c.Keyset("incident", KeysetOptions{After: Cursor{UpdatedOn: at, SysID: id}})
	wrong := "sys_updated_on>2026-11-28 10:00:00^ORsys_updated_on=2026-11-28 10:00:00^sys_id>" + id
	got := p.query().Encode()
	if want := "sys_updated_on=2026-11-28 10:00:00^sys_id>" + id + "^ORDERBYsys_id"; got != want {
		t.Errorf("finish-second query\n got %q\nwant %q", got, want)
	}
	p.phase = phaseAfter
	got2 := p.query().Encode()
	if want := "sys_updated_on>2026-11-28 10:00:00^ORDERBYsys_updated_on^ORDERBYsys_id"; got2 != want {
		t.Errorf("advance query\n got %q\nwant %q", got2, want)
	}
	for _, g := range []string{got, got2} {
		if strings.Contains(strings.ReplaceAll(g, "^ORDERBY", ""), "^OR") || strings.HasPrefix(g, wrong) {
			t.Errorf("keyset query %q uses ^OR: the wrong precedence form", g)
		}
	}
	// With a filter, the filter is ANDed to each part.
	p = c.Keyset("incident", KeysetOptions{Filter: And(Field("active").EQ(true)), After: Cursor{UpdatedOn: at}})
	if got, want := p.query().Encode(), "active=true^sys_updated_on>2026-11-28 10:00:00^ORDERBYsys_updated_on^ORDERBYsys_id"; got != want {
		t.Errorf("filtered advance query\n got %q\nwant %q", got, want)
	}
}

func TestQuery_Errors(t *testing.T) {
	tests := []struct {
		name string
		q    Query
	}{
		{"bad field", And(Field("Bad Field").EQ(1))},
		{"injection in field", And(Field("a=1^ORb").EQ(1))},
		{"comma in IN", And(Field("state").In("1,2"))},
		{"empty IN", And(Field("state").In())},
		{"nil value", And(Field("a").EQ(nil))},
		{"unsupported value", And(Field("a").EQ([]int{1}))},
		{"zero time", And(Field("sys_updated_on").GT(time.Time{}))},
		{"bad order field", Query{}.OrderBy("x^y")},
		{"and on nq", NQ(And(Field("a").EQ(1)), And(Field("b").EQ(1))).And(Field("c").EQ(1))},
		{"at in between", And(Field("a").Between("1@2", 3))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.q.Err() == nil {
				t.Errorf("Err() = nil for %q; want an error so the client refuses to send it", tt.q.Encode())
			}
		})
	}
}

func TestQuery_FieldsAndImmutability(t *testing.T) {
	base := And(Field("active").EQ(true))
	a := base.And(Field("state").EQ(1)).OrderBy("number")
	b := base.And(Field("priority").EQ(1))
	if got := base.Encode(); got != "active=true" {
		t.Errorf("base changed by derived queries: %q", got)
	}
	if got, want := a.Fields(), []string{"active", "state", "number"}; !slices.Equal(got, want) {
		t.Errorf("Fields() = %v, want %v", got, want)
	}
	if got, want := b.Encode(), "active=true^priority=1"; got != want {
		t.Errorf("b = %q, want %q", got, want)
	}
	nq := NQ(a, b)
	if got, want := nq.Fields(), []string{"active", "state", "number", "priority"}; !slices.Equal(got, want) {
		t.Errorf("NQ Fields() = %v, want %v", got, want)
	}
	if !errors.Is(nil, nil) || !(Query{}).IsZero() {
		t.Error("zero query is not zero")
	}
}
