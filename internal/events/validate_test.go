package events_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/nowbridge/nowbridge/internal/events"
)

const base = `"table":"incident","sys_id":"9d385017c611228701d22104cc95c371","action":"update","sys_mod_count":"4","sys_updated_on":"2026-11-28 10:00:00"`

// obj is an update event with extra members; it carries an empty record
// unless extra has one (an update without record is invalid).
func obj(extra string) string {
	if !strings.Contains(extra, `"record"`) {
		extra = strings.TrimPrefix(extra+`,"record":{}`, ",")
	}
	return "{" + base + "," + extra + "}"
}

// bare is an event of the given action with no record member at all.
func bare(action string) string {
	return "{" + strings.Replace(base, `"update"`, `"`+action+`"`, 1) + "}"
}

func TestDecodeBody_Accepts(t *testing.T) {
	v := events.NewValidator([]string{"incident", "problem"})
	cases := []struct {
		name  string
		body  string
		check func(t *testing.T, evs []events.SNEvent)
	}{
		{"minimal object", obj(""), func(t *testing.T, evs []events.SNEvent) {
			if len(evs) != 1 || evs[0].MsgID() != "incident:9d385017c611228701d22104cc95c371:4:update" || evs[0].Subject() != "sn.incident.update" {
				t.Errorf("got %+v", evs)
			}
		}},
		{"sys_mod_count as number", strings.Replace(obj(""), `"sys_mod_count":"4"`, `"sys_mod_count":4`, 1), func(t *testing.T, evs []events.SNEvent) {
			if evs[0].SysModCount != 4 {
				t.Errorf("count %d", evs[0].SysModCount)
			}
		}},
		{"sys_mod_count zero", strings.Replace(obj(""), `"sys_mod_count":"4"`, `"sys_mod_count":"0"`, 1), nil},
		{"surrounding whitespace", "\n  " + obj("") + "\r\n", nil},
		{"array of two tables", "[" + obj("") + "," + strings.Replace(obj(""), "incident", "problem", 1) + "]", func(t *testing.T, evs []events.SNEvent) {
			if len(evs) != 2 || evs[1].Table != "problem" {
				t.Errorf("got %+v", evs)
			}
		}},
		{"record values of every kind", obj(`"record":{"s":"x","n":12.5,"b":true,"z":null,"ref":{"link":"https://x","value":"abc"},"dv":{"display_value":"High","value":"1"}}`), func(t *testing.T, evs []events.SNEvent) {
			want := events.Fields{"s": "x", "n": "12.5", "b": "true", "z": "", "ref": "abc", "dv": "1"}
			if !reflect.DeepEqual(evs[0].Record, want) {
				t.Errorf("record %v, want %v", evs[0].Record, want)
			}
		}},
		{"unknown members ignored", obj(`"sys_class_name":"incident","x":[1,2]`), nil},
		{"insert and delete", "[" + strings.Replace(obj(""), "update", "insert", 1) + "," + strings.Replace(obj(""), "update", "delete", 1) + "]", nil},
		{"source reconcile", obj(`"source":"reconcile"`), nil},
		{"delete without record", bare("delete"), func(t *testing.T, evs []events.SNEvent) {
			if evs[0].Record != nil {
				t.Errorf("record %v, want none", evs[0].Record)
			}
		}},
		{"delete with record null", strings.Replace(bare("delete"), "}", `,"record":null}`, 1), nil},
		{"update with an empty record", obj(`"record":{}`), func(t *testing.T, evs []events.SNEvent) {
			if evs[0].Record == nil || len(evs[0].Record) != 0 {
				t.Errorf("record %#v, want an empty one", evs[0].Record)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			evs, err := v.DecodeBody([]byte(c.body))
			if err != nil {
				t.Fatalf("DecodeBody(%s): %v", c.body, err)
			}
			if c.check != nil {
				c.check(t, evs)
			}
		})
	}
}

func TestDecodeBody_RejectsWithTheRightErrorAndField(t *testing.T) {
	v := events.NewValidator([]string{"incident"})
	many := "[" + strings.TrimSuffix(strings.Repeat(obj("")+",", events.MaxBatch+1), ",") + "]"
	cases := []struct {
		name   string
		body   string
		kind   string // empty, notjson, shape, invalid
		fields []string
	}{
		{"empty", "", "empty", nil},
		{"whitespace", " \n\t", "empty", nil},
		{"empty array", "[]", "empty", nil},
		{"not JSON", "table=incident", "notjson", nil},
		{"truncated", obj("")[:40], "notjson", nil},
		{"trailing garbage", obj("") + "x", "notjson", nil},
		{"string", `"incident"`, "shape", nil},
		{"number", `42`, "shape", nil},
		{"null", `null`, "shape", nil},
		{"array of non-objects", `[` + obj("") + `, 1]`, "shape", nil},
		{"over MaxBatch", many, "shape", nil},
		{"missing everything", `{}`, "invalid", []string{"sys_mod_count", "table", "sys_id", "action", "sys_updated_on"}},
		{"bad count and bad sys_id together", strings.Replace(strings.Replace(obj(""), `"4"`, `"x"`, 1), "9d385017c611228701d22104cc95c371", "x", 1), "invalid", []string{"sys_mod_count", "sys_id"}},
		{"missing required", `{"sys_mod_count":"1"}`, "invalid", []string{"table", "sys_id", "action", "sys_updated_on"}},
		{"sys_id upper case", strings.Replace(obj(""), "9d385017c611228701d22104cc95c371", "9D385017C611228701D22104CC95C371", 1), "invalid", []string{"sys_id"}},
		{"sys_id short", strings.Replace(obj(""), "9d385017c611228701d22104cc95c371", "9d38", 1), "invalid", []string{"sys_id"}},
		{"table bad form", strings.Replace(obj(""), `"incident"`, `"Incident"`, 1), "invalid", []string{"table"}},
		{"table not synced", strings.Replace(obj(""), `"incident"`, `"change_request"`, 1), "invalid", []string{"table"}},
		{"table not a string", obj(`"table":5`), "invalid", []string{"table"}},
		{"action unknown", strings.Replace(obj(""), `"update"`, `"upsert"`, 1), "invalid", []string{"action"}},
		{"sys_mod_count negative", strings.Replace(obj(""), `"4"`, `"-1"`, 1), "invalid", []string{"sys_mod_count"}},
		{"sys_mod_count word", strings.Replace(obj(""), `"4"`, `"four"`, 1), "invalid", []string{"sys_mod_count"}},
		{"sys_mod_count fraction", strings.Replace(obj(""), `"4"`, `4.5`, 1), "invalid", []string{"sys_mod_count"}},
		{"sys_mod_count null", strings.Replace(obj(""), `"4"`, `null`, 1), "invalid", []string{"sys_mod_count"}},
		{"sys_updated_on local form", strings.Replace(obj(""), "2026-11-28 10:00:00", "2026-11-28T10:00:00Z", 1), "invalid", []string{"sys_updated_on"}},
		{"sys_updated_on impossible date", strings.Replace(obj(""), "2026-11-28", "2026-02-30", 1), "invalid", []string{"sys_updated_on"}},
		{"changed not an array", obj(`"changed":"state"`), "invalid", []string{"changed"}},
		{"changed empty name", obj(`"changed":["state",""]`), "invalid", []string{"changed[1]"}},
		{"record not an object", obj(`"record":"x"`), "invalid", []string{"record"}},
		{"record value an array", obj(`"record":{"a":[1]}`), "invalid", []string{"record.a"}},
		{"record value bad before the count", `{"record":{"a":[1]},` + base + `}`, "invalid", []string{"record.a"}},
		{"record reference without value", obj(`"record":{"caller_id":{"link":"https://x"}}`), "invalid", []string{"record.caller_id"}},
		{"source unknown", obj(`"source":"replay"`), "invalid", []string{"source"}},
		{"update without record", bare("update"), "invalid", []string{"record"}},
		{"insert without record", bare("insert"), "invalid", []string{"record"}},
		{"update with record null", strings.Replace(bare("update"), "}", `,"record":null}`, 1), "invalid", []string{"record"}},
		{"array names the event without record", "[" + obj("") + "," + bare("insert") + "," + bare("delete") + "]", "invalid", []string{"[1].record"}},
		{"array names each index", "[" + obj("") + "," + strings.Replace(obj(""), "9d385017c611228701d22104cc95c371", "x", 1) + "," + strings.Replace(obj(""), `"update"`, `"x"`, 1) + "]", "invalid", []string{"[1].sys_id", "[2].action"}},
		{"array element record value", "[" + obj("") + "," + obj(`"record":{"a":[1]}`) + "]", "invalid", []string{"[1].record.a"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			evs, err := v.DecodeBody([]byte(c.body))
			if err == nil {
				t.Fatalf("accepted %d events, want a %s error", len(evs), c.kind)
			}
			if evs != nil {
				t.Errorf("returned events with an error: all or nothing")
			}
			var shape *events.ShapeError
			var verr *events.ValidationError
			switch c.kind {
			case "empty":
				if !errors.Is(err, events.ErrEmptyBody) {
					t.Fatalf("err %v, want ErrEmptyBody", err)
				}
			case "notjson":
				if !errors.Is(err, events.ErrNotJSON) {
					t.Fatalf("err %v, want ErrNotJSON", err)
				}
			case "shape":
				if !errors.As(err, &shape) || !errors.Is(err, events.ErrShape) {
					t.Fatalf("err %v, want a *ShapeError", err)
				}
			case "invalid":
				if !errors.As(err, &verr) {
					t.Fatalf("err %v, want a *ValidationError", err)
				}
				var got []string
				for _, p := range verr.Problems {
					if p.Message == "" {
						t.Errorf("problem %q has no message", p.Field)
					}
					got = append(got, p.Field)
				}
				if !reflect.DeepEqual(got, c.fields) {
					t.Fatalf("problems name %q, want %q (%v)", got, c.fields, err)
				}
			}
		})
	}
}

func TestValidate_UnknownTableNamesTheConfiguredOnes(t *testing.T) {
	v := events.NewValidator([]string{"problem", "incident"})
	_, err := v.DecodeBody([]byte(strings.Replace(obj(""), `"incident"`, `"sc_task"`, 1)))
	if err == nil || !strings.Contains(err.Error(), `"sc_task" is not synced by this bridge (configured: incident,problem)`) {
		t.Fatalf("err %v should name the table and the configured ones", err)
	}
}

func TestModCount_JSON(t *testing.T) {
	for in, want := range map[string]int64{`"0"`: 0, `"17"`: 17, `17`: 17, ` 3 `: 3, `"9223372036854775807"`: 1<<63 - 1} {
		var m events.ModCount
		if err := json.Unmarshal([]byte(in), &m); err != nil || int64(m) != want {
			t.Errorf("%s: %d %v, want %d", in, m, err, want)
		}
	}
	for _, in := range []string{`"-1"`, `-1`, `"x"`, `1.5`, `true`, `null`, `"9223372036854775808"`, `""`} {
		var m events.ModCount
		if err := m.UnmarshalJSON([]byte(in)); err == nil {
			t.Errorf("%s accepted as %d", in, m)
		}
	}
	if b, _ := json.Marshal(events.ModCount(4)); string(b) != `"4"` {
		t.Errorf("ModCount marshals as %s, want \"4\" like ServiceNow", b)
	}
}

func TestMsgIDAndSubjects(t *testing.T) {
	if got := events.MsgID("incident", "abc", 12, "delete"); got != "incident:abc:12:delete" {
		t.Errorf("MsgID %q", got)
	}
	for subj, want := range map[string][3]string{
		"sn.incident.update":         {"sn", "incident", "update"},
		"app.ticket.upsert":          {"app", "ticket", "upsert"},
		"bridge.apply.ticket.delete": {"bridge.apply", "ticket", "delete"},
	} {
		k, n, a, ok := events.ParseSubject(subj)
		if !ok || [3]string{k, n, a} != want {
			t.Errorf("ParseSubject(%q) = %q %q %q %v", subj, k, n, a, ok)
		}
	}
	if _, _, _, ok := events.ParseSubject("sn.incident"); ok {
		t.Error("ParseSubject accepted two tokens")
	}
}

func TestAppendStored_SameBytesAsEncodingJSON(t *testing.T) {
	for _, ev := range []events.SNEvent{
		{Table: "incident", SysID: strings.Repeat("a", 32), Action: "update", SysModCount: 4, SysUpdatedOn: "2026-11-28 10:00:00"},
		{Instance: "dev1", Table: "incident", SysID: strings.Repeat("b", 32), Action: "insert", SysModCount: 0, SysUpdatedOn: "2026-11-28 10:00:00",
			SysUpdatedBy: "beth", Changed: []string{"state", "<b>&"}, Source: "webhook",
			Record: events.Fields{"z": "1", "a": "x\ny\t\"q\" \\ <&> \u2028\u2029 \x01\x7f é \xff\xfe", "": "", "B": "\b\f\r"}},
		{Table: "incident", SysID: strings.Repeat("c", 32), Action: "delete", SysModCount: 9, SysUpdatedOn: "x", Record: events.Fields{}, Changed: []string{}},
	} {
		want, err := json.Marshal(&ev)
		if err != nil {
			t.Fatal(err)
		}
		if got := events.AppendStored(nil, &ev); string(got) != string(want) {
			t.Errorf("AppendStored:\n got %s\nwant %s", got, want)
		}
	}
}
