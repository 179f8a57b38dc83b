package snsim

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the simulator's current responses")

// TestGolden pins the simulator's responses to the shapes of the facts file:
// envelopes, string values, references, display values, pagination headers,
// error bodies and the token response. Run with -update after an intended
// change, and read the diff.
func TestGolden(t *testing.T) {
	sim := New(Config{ClientID: "client-id", ClientSecret: "client-secret", Seed: 99, Now: newClock().Now, InstanceName: "dev12345"})
	defer sim.Close()
	srv := httptest.NewServer(sim)
	defer srv.Close()

	beth := stableID("sys_user", "beth.anglin")
	desk := stableID("sys_user_group", "Service Desk")
	id1, id2, id3 := strings.Repeat("1", 32), strings.Repeat("2", 32), strings.Repeat("3", 32)
	for _, f := range []map[string]string{
		{"sys_id": id1, "short_description": "Email down", "impact": "1", "urgency": "2", "caller_id": beth, "assignment_group": desk, "category": "software", "comments": "Cannot send mail since 9am"},
		{"sys_id": id2, "short_description": "VPN drops", "state": "2", "caller_id": beth, "correlation_id": "TCK-1042", "correlation_display": "Acme Helpdesk"},
		{"sys_id": id3, "short_description": "Printer jam", "state": "6", "close_code": "Solution provided", "close_notes": "Cleared the jam"},
	} {
		if _, err := sim.InsertNoWorkflow("incident", f, "beth.anglin"); err != nil {
			t.Fatal(err)
		}
	}

	chg, prb := strings.Repeat("4", 32), strings.Repeat("5", 32)
	for table, f := range map[string]map[string]string{
		"change_request":  {"sys_id": chg, "short_description": "Replace core switch", "state": "-1", "type": "normal", "category": "network"},
		"problem":         {"sys_id": prb, "short_description": "Mail gateway restarts", "state": "104"},
		"sn_hr_core_case": {"sys_id": strings.Repeat("6", 32), "short_description": "Parental leave request"},
	} {
		if _, err := sim.InsertNoWorkflow(table, f, "beth.anglin"); err != nil {
			t.Fatal(err)
		}
	}

	tok := ""
	call := func(method, path, ctype, body string, auth bool) string {
		t.Helper()
		req := httptest.NewRequest(method, "https://dev12345.service-now.com"+path, strings.NewReader(body))
		req.RequestURI = ""
		req.URL.Scheme, req.URL.Host = "http", strings.TrimPrefix(srv.URL, "http://")
		req.Host = "dev12345.service-now.com"
		req.Header.Set("X-Forwarded-Proto", "https")
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		if auth {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var out strings.Builder
		out.WriteString(method + " " + path + "\n")
		out.WriteString("HTTP " + resp.Status + "\n")
		for _, h := range []string{"Content-Type", "Location", "WWW-Authenticate", "X-Total-Count", "Link", "Retry-After", "X-RateLimit-Limit", "X-RateLimit-Reset", "X-RateLimit-Rule"} {
			if v := resp.Header.Get(h); v != "" {
				out.WriteString(h + ": " + v + "\n")
			}
		}
		out.WriteString("\n")
		if len(raw) > 0 {
			var pretty bytes.Buffer
			if json.Indent(&pretty, raw, "", "  ") == nil {
				raw = pretty.Bytes()
			}
			out.Write(raw)
			out.WriteString("\n")
		}
		return out.String()
	}
	tokenRe := regexp.MustCompile(`"access_token": "[^"]+"`)
	form := "application/x-www-form-urlencoded"
	tokenResp := call("POST", "/oauth_token.do", form, "grant_type=client_credentials&client_id=client-id&client_secret=client-secret", false)
	var tb struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.Unmarshal([]byte(tokenResp[strings.Index(tokenResp, "{"):]), &tb)
	tok = tb.AccessToken
	if tok == "" {
		t.Fatalf("no token:\n%s", tokenResp)
	}

	cases := []struct {
		name string
		got  func() string
	}{
		{"token_ok", func() string { return tokenRe.ReplaceAllString(tokenResp, `"access_token": "<86 characters>"`) }},
		{"token_failure", func() string {
			return call("POST", "/oauth_token.do", form, "grant_type=client_credentials&client_id=client-id&client_secret=wrong", false)
		}},
		{"list_page1", func() string {
			return call("GET", "/api/now/table/incident?sysparm_limit=2&sysparm_query=ORDERBYnumber&sysparm_fields=number,short_description,state,caller_id", "", "", true)
		}},
		{"list_last_page", func() string {
			return call("GET", "/api/now/table/incident?sysparm_limit=2&sysparm_offset=2&sysparm_query=ORDERBYnumber&sysparm_fields=number,state", "", "", true)
		}},
		{"get_raw", func() string { return call("GET", "/api/now/table/incident/"+id1, "", "", true) }},
		{"get_display_true", func() string {
			return call("GET", "/api/now/table/incident/"+id1+"?sysparm_display_value=true&sysparm_fields=number,state,priority,caller_id,assignment_group,comments,active", "", "", true)
		}},
		{"get_display_all", func() string {
			return call("GET", "/api/now/table/incident/"+id1+"?sysparm_display_value=all&sysparm_fields=number,state,priority,caller_id,assigned_to,comments", "", "", true)
		}},
		{"get_exclude_reference_link", func() string {
			return call("GET", "/api/now/table/incident/"+id2+"?sysparm_exclude_reference_link=true&sysparm_fields=number,caller_id,correlation_id,correlation_display", "", "", true)
		}},
		{"post_created", func() string {
			return call("POST", "/api/now/table/incident?sysparm_fields=sys_id,number,priority,sys_mod_count,sys_updated_by", "application/json", `{"short_description":"New","impact":"2","urgency":"2","priority":"1"}`, true)
		}},
		{"error_401", func() string { return call("GET", "/api/now/table/incident", "", "", false) }},
		{"error_404_record", func() string { return call("GET", "/api/now/table/incident/"+strings.Repeat("0", 32), "", "", true) }},
		{"error_404_v1_no_match", func() string {
			return call("GET", "/api/now/v1/table/incident?sysparm_query=number=INC0000000", "", "", true)
		}},
		{"unversioned_no_match", func() string {
			return call("GET", "/api/now/table/incident?sysparm_query=number=INC0000000", "", "", true)
		}},
		{"get_v2_reference_links", func() string {
			return call("GET", "/api/now/v2/table/incident/"+id1+"?sysparm_fields=number,caller_id,assignment_group", "", "", true)
		}},
		{"hidden_sys_dictionary", func() string {
			return call("GET", "/api/now/v2/table/sys_dictionary?sysparm_limit=2&sysparm_query=name=incident&sysparm_fields=element", "", "", true)
		}},
		{"sys_choice_close_code", func() string {
			return call("GET", "/api/now/v2/table/sys_choice?sysparm_query=name=incident^element=close_code^inactive=false^ORDERBYsequence&sysparm_fields=value,label,sequence", "", "", true)
		}},
		{"error_403_data_policy_dropped_code", func() string {
			return call("PATCH", "/api/now/table/incident/"+id1, "application/json", `{"state":"6","close_code":"Solved (Permanently)","close_notes":"Fixed"}`, true)
		}},
		{"error_429_semaphore", func() string {
			_ = sim.SetFaults(Faults{SemaphoreRate: 1})
			defer func() { _ = sim.SetFaults(Faults{}) }()
			return call("GET", "/api/now/v2/table/incident?sysparm_limit=1", "", "", true)
		}},
		{"rate_limit_headers_on_success", func() string {
			_ = sim.SetRateLimitRules([]RateLimitRule{{SysID: "0d5c0e4a1b2c3d4e5f60718293a4b5c6", Count: 5000}})
			defer func() { _ = sim.SetRateLimitRules(nil) }()
			return call("GET", "/api/now/v2/table/incident?sysparm_limit=1&sysparm_fields=number", "", "", true)
		}},
		{"v2_no_match", func() string {
			return call("GET", "/api/now/v2/table/incident?sysparm_query=number=INC0000000", "", "", true)
		}},
		{"error_400_invalid_table", func() string { return call("GET", "/api/now/table/incidents", "", "", true) }},
		{"error_400_invalid_json", func() string {
			return call("PATCH", "/api/now/table/incident/"+id1, "application/json", `{"state":`, true)
		}},
		{"error_403_data_policy", func() string {
			return call("PATCH", "/api/now/table/incident/"+id1, "application/json", `{"state":"6"}`, true)
		}},
		{"error_403_acl_write", func() string {
			sim.SetACL(ACL{DenyWrites: true})
			defer sim.SetACL(ACL{})
			return call("PATCH", "/api/now/table/incident/"+id1, "application/json", `{"state":"2"}`, true)
		}},
		{"error_403_query_hidden_field", func() string {
			sim.SetACL(ACL{HiddenFields: map[string][]string{"incident": {"description"}}})
			defer sim.SetACL(ACL{})
			return call("GET", "/api/now/table/incident?sysparm_query=descriptionLIKEmail", "", "", true)
		}},
		{"post_change_request_created", func() string {
			return call("POST", "/api/now/v2/table/change_request?sysparm_fields=sys_id,number,state,priority,impact,urgency,active,type,category",
				"application/json", `{"short_description":"Patch database servers","impact":"1","urgency":"1","priority":"2"}`, true)
		}},
		{"get_change_request_display_all", func() string {
			return call("GET", "/api/now/table/change_request/"+chg+"?sysparm_display_value=all&sysparm_fields=number,state,priority,type,category,close_code,active", "", "", true)
		}},
		{"sys_choice_change_request_state", func() string {
			return call("GET", "/api/now/v2/table/sys_choice?sysparm_query=name=change_request^element=state^inactive=false^ORDERBYsequence&sysparm_fields=value,label,sequence", "", "", true)
		}},
		{"error_403_data_policy_change_close", func() string {
			return call("PATCH", "/api/now/table/change_request/"+chg, "application/json", `{"state":"3","close_code":"Solution provided"}`, true)
		}},
		{"error_403_data_policy_problem_resolve", func() string {
			return call("PATCH", "/api/now/table/problem/"+prb, "application/json", `{"state":"106","resolution_code":"fix_applied","cause_notes":"Firmware leak"}`, true)
		}},
		{"hidden_sn_hr_core_case", func() string {
			return call("GET", "/api/now/v2/table/sn_hr_core_case?sysparm_limit=1&sysparm_fields=number,state", "", "", true)
		}},
		{"error_403_hr_case_write", func() string {
			return call("POST", "/api/now/table/sn_hr_core_case", "application/json", `{"short_description":"x"}`, true)
		}},
		{"error_429", func() string {
			sim.SetBurstLimit(1)
			defer sim.SetBurstLimit(0)
			call("GET", "/api/now/v2/table/incident?sysparm_limit=1", "", "", true)
			return call("GET", "/api/now/v2/table/incident?sysparm_limit=1", "", "", true)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := c.got()
			path := filepath.Join("testdata", c.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -run TestGolden -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("%s differs from the golden file (go test -run TestGolden -update, then review the diff)\n--- got\n%s\n--- want\n%s", path, got, want)
			}
		})
	}
}
