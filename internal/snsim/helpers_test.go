package snsim

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// fixedNow is the clock of tests that assert timestamps.
var fixedNow = time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)

type harness struct {
	t   *testing.T
	sim *Server
	srv *httptest.Server
	tok string
}

// newHarness starts a simulator on httptest with a token already issued.
func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	if cfg.ClientID == "" {
		cfg.ClientID, cfg.ClientSecret = "client-id", "client-secret"
	}
	if cfg.Seed == 0 {
		cfg.Seed = 42
	}
	sim := New(cfg)
	srv := httptest.NewServer(sim)
	t.Cleanup(func() {
		srv.Close()
		sim.Close()
	})
	h := &harness{t: t, sim: sim, srv: srv}
	h.tok = h.token()
	return h
}

func (h *harness) token() string {
	h.t.Helper()
	resp, err := http.PostForm(h.srv.URL+"/oauth_token.do", url.Values{
		"grant_type": {"client_credentials"}, "client_id": {h.sim.cfg.ClientID}, "client_secret": {h.sim.cfg.ClientSecret},
	})
	if err != nil {
		h.t.Fatalf("token request: %v", err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.AccessToken == "" {
		h.t.Fatalf("token response (status %d) has no access_token: %v", resp.StatusCode, err)
	}
	return body.AccessToken
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("response body is not a JSON object: %v\n%s", err, r.body)
	}
	return m
}

// list decodes {"result":[...]} into maps of raw JSON values.
func (r response) results(t *testing.T) []map[string]any {
	t.Helper()
	var env struct {
		Result []map[string]any `json:"result"`
	}
	if err := json.Unmarshal(r.body, &env); err != nil {
		t.Fatalf("response body is not a result list: %v\n%s", err, r.body)
	}
	return env.Result
}

func (r response) result(t *testing.T) map[string]any {
	t.Helper()
	var env struct {
		Result map[string]any `json:"result"`
	}
	if err := json.Unmarshal(r.body, &env); err != nil {
		t.Fatalf("response body is not a single result: %v\n%s", err, r.body)
	}
	return env.Result
}

func (h *harness) do(method, path string, body string) response {
	h.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, h.srv.URL+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+h.tok)
	req.Header.Set("Accept", "application/json")
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func (h *harness) get(path string, q url.Values) response {
	h.t.Helper()
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return h.do(http.MethodGet, path, "")
}
