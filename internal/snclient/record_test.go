package snclient

import (
	"encoding/json"
	"testing"
	"time"
)

func TestRecord_DecodesServiceNowShapes(t *testing.T) {
	const body = `{
	  "sys_id": "9d385017c611228701d22104cc95c371",
	  "sys_mod_count": "4",
	  "active": "true",
	  "priority": "3",
	  "description": "",
	  "sys_updated_on": "2026-11-28 10:00:00",
	  "caller_id": {"link": "https://dev1.service-now.com/api/now/table/sys_user/5137153cc611227c000bbd1bd8cd2005", "value": "5137153cc611227c000bbd1bd8cd2005"},
	  "assigned_to": "",
	  "state": {"display_value": "In Progress", "value": "2"},
	  "opened_by": {"display_value": "Beth Anglin", "value": "46d44a23a9fe19810012d100cca80666", "link": "https://dev1.service-now.com/api/now/table/sys_user/46d44a23a9fe19810012d100cca80666"},
	  "odd_number": 7,
	  "odd_bool": false,
	  "nothing": null
	}`
	var r Record
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	checks := []struct{ got, want string }{
		{r.Get("sys_mod_count"), "4"},
		{r.Get("active"), "true"},
		{r.Get("description"), ""},
		{r.Get("caller_id"), "5137153cc611227c000bbd1bd8cd2005"},
		{r["caller_id"].Link, "https://dev1.service-now.com/api/now/table/sys_user/5137153cc611227c000bbd1bd8cd2005"},
		{r.Display("caller_id"), "5137153cc611227c000bbd1bd8cd2005"},
		{r.Get("state"), "2"},
		{r.Display("state"), "In Progress"},
		{r.Display("opened_by"), "Beth Anglin"},
		{r["opened_by"].Link, "https://dev1.service-now.com/api/now/table/sys_user/46d44a23a9fe19810012d100cca80666"},
		{r.Get("odd_number"), "7"},
		{r.Get("odd_bool"), "false"},
		{r.Get("nothing"), ""},
		{r.SysID(), "9d385017c611228701d22104cc95c371"},
	}
	for i, c := range checks {
		if c.got != c.want {
			t.Errorf("check %d: got %q, want %q", i, c.got, c.want)
		}
	}
	if n, err := r.ModCount(); err != nil || n != 4 {
		t.Errorf("ModCount() = %d, %v", n, err)
	}
	if at, err := r.UpdatedOn(); err != nil || !at.Equal(time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)) {
		t.Errorf("UpdatedOn() = %v, %v", at, err)
	}
	if !r.Has("assigned_to") || r.Has("work_notes") {
		t.Error("Has() wrong: an empty field is present, an omitted one is not")
	}
	f := r.Fields()
	if f["caller_id"] != "5137153cc611227c000bbd1bd8cd2005" || f["state"] != "2" {
		t.Errorf("Fields() = %v", f)
	}
	// Round trip keeps the shapes.
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var r2 Record
	if err := json.Unmarshal(b, &r2); err != nil {
		t.Fatal(err)
	}
	if r2["opened_by"] != r["opened_by"] || r2["caller_id"] != r["caller_id"] || r2.Get("active") != "true" {
		t.Errorf("round trip changed values: %v", r2)
	}
}

func TestRecord_RejectsWhatIsNotARecord(t *testing.T) {
	for _, body := range []string{`null`, `[]`, `"x"`, `{"a": [1]}`, `{"a": {"link": "x"}}`, `{"a": {"value": [1]}}`, `{`} {
		var r Record
		if err := json.Unmarshal([]byte(body), &r); err == nil {
			t.Errorf("Unmarshal(%s) = nil error, got %v", body, r)
		}
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(`{"result":[{"sys_id":"9d385017c611228701d22104cc95c371","sys_mod_count":"0","caller_id":{"link":"https://x/api/now/table/sys_user/1","value":"1"},"state":{"display_value":"New","value":"1"}}]}`)
	f.Add(`{"result":{"a":"","b":null,"c":1.5e3,"d":true}}`)
	f.Add(`{"result":[{"a":{"value":{"value":"nested"}}}]}`)
	f.Add(`{"error":{"message":"No Record found","detail":"Record doesn't exist or ACL restricts the record retrieval"},"status":"failure"}`)
	f.Add(`{"result":[null]}`)
	f.Fuzz(func(t *testing.T, body string) {
		var list struct {
			Result []Record `json:"result"`
		}
		if json.Unmarshal([]byte(body), &list) == nil {
			for _, r := range list.Result {
				_ = r.Fields()
				_, _ = r.UpdatedOn()
				if _, err := json.Marshal(r); err != nil {
					t.Errorf("decoded record does not encode: %v", err)
				}
			}
		}
		_, _ = decodeOne([]byte(body))
	})
}
