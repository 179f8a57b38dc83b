package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// simProcess is `bridge sim` running in-process.
type simProcess struct {
	base   string
	token  string
	out    *lockedBuffer
	errOut *lockedBuffer
	exited chan int
	cancel context.CancelFunc
}

// startSim runs `bridge sim` with args (plus a loopback listener and fixed
// credentials), waits for the URL it prints and takes a token with the
// credentials it printed.
func startSim(t *testing.T, args ...string) *simProcess {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &simProcess{out: &lockedBuffer{}, errOut: &lockedBuffer{}, exited: make(chan int, 1), cancel: cancel}
	args = append([]string{"sim", "--listen", "127.0.0.1:0", "--client-id", "cid", "--client-secret", "s3cret-value"}, args...)
	go func() {
		p.exited <- run(ctx, args, func(string) string { return "" }, strings.NewReader(""), p.out, p.errOut)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			t.Error("bridge sim did not stop within 10s of cancellation")
		}
	})
	urlRe := regexp.MustCompile(`BRIDGE_SN_INSTANCE_URL=(\S+)`)
	for deadline := time.Now().Add(10 * time.Second); p.base == "" && time.Now().Before(deadline); {
		if m := urlRe.FindStringSubmatch(p.out.String()); m != nil {
			p.base = m[1]
			break
		}
		select {
		case code := <-p.exited:
			t.Fatalf("bridge sim exited with %d before printing its URL:\n%s%s", code, p.out.String(), p.errOut.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if p.base == "" {
		t.Fatalf("bridge sim printed no URL within 10s:\n%s", p.out.String())
	}
	if !strings.HasPrefix(p.base, "http://127.0.0.1:") {
		t.Fatalf("simulator must listen on loopback, printed %q", p.base)
	}
	resp, err := http.PostForm(p.base+"/oauth_token.do", url.Values{"grant_type": {"client_credentials"}, "client_id": {"cid"}, "client_secret": {"s3cret-value"}})
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	err = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || tok.AccessToken == "" {
		t.Fatalf("token exchange with the printed credentials: status %d, err %v", resp.StatusCode, err)
	}
	p.token = tok.AccessToken
	return p
}

// list GETs a Table API path and returns the status, X-Total-Count and rows.
func (p *simProcess) list(t *testing.T, path string) (int, string, []map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, p.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+p.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list struct {
		Result []map[string]any `json:"result"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatalf("GET %s: status %d, body is not a result list: %v", path, resp.StatusCode, err)
	}
	return resp.StatusCode, resp.Header.Get("X-Total-Count"), list.Result
}

// TestSim_ServesSeededInstanceAndStops runs `bridge sim` in-process, takes the
// URL and credentials it prints, and reads the seeded incidents through OAuth
// and the Table API the way the bridge would.
func TestSim_ServesSeededInstanceAndStops(t *testing.T) {
	p := startSim(t, "--seed", "25")
	status, total, rows := p.list(t, "/api/now/table/incident?sysparm_limit=1")
	if status != http.StatusOK {
		t.Fatalf("list incidents: status %d", status)
	}
	if total != "25" {
		t.Errorf("X-Total-Count = %q, want 25 seeded incidents", total)
	}
	if len(rows) != 1 {
		t.Errorf("sysparm_limit=1 returned %d rows", len(rows))
	}

	p.cancel()
	select {
	case code := <-p.exited:
		if code != 0 {
			t.Fatalf("bridge sim exited with %d on shutdown:\n%s", code, p.errOut.String())
		}
		p.exited <- code // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("bridge sim did not stop within 10s of cancellation")
	}
	if !strings.Contains(p.out.String(), "stopped") {
		t.Errorf("expected a shutdown line, got:\n%s", p.out.String())
	}
}

// TestSim_LeastPrivilegeByDefaultGrantsByFlag: the application user cannot
// read sys_dictionary or sys_audit_delete (200, no rows, counted) unless
// --grant-dictionary / --grant-audit-delete say so; --acl-mode no-roles
// hides incident.
func TestSim_LeastPrivilegeByDefaultGrantsByFlag(t *testing.T) {
	tests := []struct {
		flags    []string
		readable map[string]bool
	}{
		{nil, map[string]bool{"incident": true, "sys_dictionary": false, "sys_audit_delete": false}},
		{[]string{"--grant-dictionary"}, map[string]bool{"incident": true, "sys_dictionary": true, "sys_audit_delete": false}},
		{[]string{"--grant-audit-delete"}, map[string]bool{"incident": true, "sys_dictionary": false, "sys_audit_delete": true}},
		{[]string{"--acl-mode", "no-roles"}, map[string]bool{"incident": false, "sys_user": true}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(append([]string{"flags"}, tt.flags...), " "), func(t *testing.T) {
			p := startSim(t, append([]string{"--seed", "3"}, tt.flags...)...)
			// A delete through the API leaves a sys_audit_delete row.
			_, _, inc := p.list(t, "/api/now/table/incident?sysparm_limit=1&sysparm_fields=sys_id")
			if tt.readable["incident"] {
				req, _ := http.NewRequest(http.MethodDelete, p.base+"/api/now/table/incident/"+inc[0]["sys_id"].(string), nil)
				req.Header.Set("Authorization", "Bearer "+p.token)
				resp, err := http.DefaultClient.Do(req)
				if err != nil || resp.StatusCode != http.StatusNoContent {
					t.Fatalf("DELETE: %v %v", resp, err)
				}
				resp.Body.Close()
			}
			for table, readable := range tt.readable {
				status, total, rows := p.list(t, "/api/now/table/"+table+"?sysparm_limit=5")
				if status != http.StatusOK || (len(rows) > 0) != readable {
					t.Errorf("%s: status %d, %d rows; want 200 with rows=%v", table, status, len(rows), readable)
				}
				if total == "" || total == "0" {
					t.Errorf("%s: X-Total-Count %q; hidden or not, the rows must be counted", table, total)
				}
			}
		})
	}
}

// TestSim_CloseCodesByRelease: sys_choice serves the current release's
// close codes unless --legacy-close-codes asks for the older ones.
func TestSim_CloseCodesByRelease(t *testing.T) {
	for _, tt := range []struct {
		flags      []string
		has, hasnt string
	}{
		{nil, "Solution provided", "Solved (Permanently)"},
		{[]string{"--legacy-close-codes"}, "Solved (Permanently)", "Solution provided"},
	} {
		p := startSim(t, tt.flags...)
		_, _, rows := p.list(t, "/api/now/table/sys_choice?sysparm_query="+url.QueryEscape("name=incident^element=close_code^inactive=false")+"&sysparm_fields=value")
		values := map[string]bool{}
		for _, r := range rows {
			values[r["value"].(string)] = true
		}
		if !values[tt.has] || values[tt.hasnt] {
			t.Errorf("flags %v: close codes %v; want %q and not %q", tt.flags, values, tt.has, tt.hasnt)
		}
	}
}

// TestSim_SemaphoreRate: --semaphore-rate 1 answers every Table API call 429.
func TestSim_SemaphoreRate(t *testing.T) {
	p := startSim(t, "--semaphore-rate", "1")
	if status, _, _ := p.list(t, "/api/now/table/incident"); status != http.StatusTooManyRequests {
		t.Errorf("status %d, want 429", status)
	}
}

func TestSim_BadFlagIsUsageError(t *testing.T) {
	var out, errOut lockedBuffer
	code := run(context.Background(), []string{"sim", "--drop-rate", "lots"}, func(string) string { return "" }, strings.NewReader(""), &out, &errOut)
	if code != 2 {
		t.Fatalf("exit = %d, want 2 for a malformed flag; stderr: %s", code, errOut.String())
	}
	if lines := strings.Count(strings.TrimSpace(errOut.String()), "\n"); lines != 0 {
		t.Errorf("error should be one line, got:\n%s", errOut.String())
	}
}

// TestSim_TablesSeededAndSendingWebhooks: --tables names the ticket tables
// seeded (--seed N spread over them) and whose business rules send
// (nowbridge.tables); a table not listed sends nothing.
func TestSim_TablesSeededAndSendingWebhooks(t *testing.T) {
	var mu sync.Mutex
	got := map[string]int{}
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev struct {
			Table string `json:"table"`
		}
		_ = json.NewDecoder(r.Body).Decode(&ev)
		mu.Lock()
		got[ev.Table]++
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	defer rcv.Close()
	p := startSim(t, "--tables", "incident,change_request,problem", "--seed", "31", "--webhook-url", rcv.URL)
	for table, want := range map[string]string{"incident": "11", "change_request": "10", "problem": "10", "sc_req_item": "0"} {
		if _, total, _ := p.list(t, "/api/now/table/"+table+"?sysparm_limit=1"); total != want {
			t.Errorf("%s: X-Total-Count %q, want %s", table, total, want)
		}
	}
	if !strings.Contains(p.out.String(), "BRIDGE_TABLES=incident,change_request,problem") {
		t.Errorf("the simulator does not print the tables to sync:\n%s", p.out.String())
	}
	post := func(table string) {
		req, _ := http.NewRequest(http.MethodPost, p.base+"/api/now/table/"+table, strings.NewReader(`{"short_description":"from the test"}`))
		req.Header.Set("Authorization", "Bearer "+p.token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("POST %s: %v %v", table, resp, err)
		}
		resp.Body.Close()
	}
	post("change_request")
	post("sc_req_item")
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := got["change_request"]
		mu.Unlock()
		if n == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // a webhook for sc_req_item would have left by now
	mu.Lock()
	defer mu.Unlock()
	if got["change_request"] != 1 || got["sc_req_item"] != 0 {
		t.Errorf("webhooks by table %v; want one for change_request and none for sc_req_item (not in --tables)", got)
	}
}

// TestSim_HRRoleFlag: HR cases are hidden unless --grant-hr-role names an
// HR role; an unknown role or table is a usage error.
func TestSim_HRRoleFlag(t *testing.T) {
	for _, tt := range []struct {
		flags    []string
		readable bool
	}{
		{nil, false},
		{[]string{"--grant-hr-role", "sn_hr_core.case_writer"}, true},
	} {
		p := startSim(t, append([]string{"--tables", "sn_hr_core_case", "--seed", "4"}, tt.flags...)...)
		status, total, rows := p.list(t, "/api/now/table/sn_hr_core_case?sysparm_limit=2")
		if status != http.StatusOK || total != "4" || (len(rows) > 0) != tt.readable {
			t.Errorf("flags %v: status %d, X-Total-Count %q, %d rows; want 200, 4, rows=%v", tt.flags, status, total, len(rows), tt.readable)
		}
	}
	for _, args := range [][]string{{"sim", "--grant-hr-role", "hr_admin"}, {"sim", "--tables", "incident,tickets"}} {
		var out, errOut lockedBuffer
		if code := run(context.Background(), args, func(string) string { return "" }, strings.NewReader(""), &out, &errOut); code != 2 {
			t.Errorf("%v: exit %d, want 2 (usage); stderr %s", args, code, errOut.String())
		}
		if !strings.Contains(errOut.String(), "change_request") && !strings.Contains(errOut.String(), "case_writer") {
			t.Errorf("%v: the error does not list the valid values: %s", args, errOut.String())
		}
	}
}
