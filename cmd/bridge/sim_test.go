package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestSim_ServesSeededInstanceAndStops runs `bridge sim` in-process, takes the
// URL and credentials it prints, and reads the seeded incidents through OAuth
// and the Table API the way the bridge would.
func TestSim_ServesSeededInstanceAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut lockedBuffer
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"sim", "--listen", "127.0.0.1:0", "--seed", "25", "--client-id", "cid", "--client-secret", "s3cret-value"},
			func(string) string { return "" }, strings.NewReader(""), &out, &errOut)
	}()

	urlRe := regexp.MustCompile(`BRIDGE_SN_INSTANCE_URL=(\S+)`)
	var base string
	for deadline := time.Now().Add(10 * time.Second); base == "" && time.Now().Before(deadline); {
		if m := urlRe.FindStringSubmatch(out.String()); m != nil {
			base = m[1]
			break
		}
		select {
		case code := <-exited:
			t.Fatalf("bridge sim exited with %d before printing its URL:\n%s%s", code, out.String(), errOut.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if base == "" {
		t.Fatalf("bridge sim printed no URL within 10s:\n%s", out.String())
	}
	if !strings.HasPrefix(base, "http://127.0.0.1:") {
		t.Fatalf("simulator must listen on loopback, printed %q", base)
	}

	resp, err := http.PostForm(base+"/oauth_token.do", url.Values{"grant_type": {"client_credentials"}, "client_id": {"cid"}, "client_secret": {"s3cret-value"}})
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	err = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || tok.AccessToken == "" {
		t.Fatalf("token exchange with the printed credentials: status %d, err %v", resp.StatusCode, err)
	}

	req, _ := http.NewRequest(http.MethodGet, base+"/api/now/table/incident?sysparm_limit=1", nil)
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Result []map[string]any `json:"result"`
	}
	err = json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("list incidents: status %d, err %v", resp.StatusCode, err)
	}
	if got := resp.Header.Get("X-Total-Count"); got != "25" {
		t.Errorf("X-Total-Count = %q, want 25 seeded incidents", got)
	}
	if len(list.Result) != 1 {
		t.Errorf("sysparm_limit=1 returned %d rows", len(list.Result))
	}

	cancel()
	select {
	case code := <-exited:
		if code != 0 {
			t.Fatalf("bridge sim exited with %d on shutdown:\n%s", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("bridge sim did not stop within 10s of cancellation")
	}
	if !strings.Contains(out.String(), "stopped") {
		t.Errorf("expected a shutdown line, got:\n%s", out.String())
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
