package snclient

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/snsim"
)

// TestCallScripted_AuthenticatedAnswersAndErrors: a Scripted REST resource
// is called with the client's token; its answer comes back as sent; a
// refusal is an *APIError with ServiceNow's message, the path, and none
// of the Table API's hints; a refused POST is not repeated.
func TestCallScripted_AuthenticatedAnswersAndErrors(t *testing.T) {
	sim, c := newSim(t, 0, snsim.Config{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	path := events.SelfTestPath(events.SelfTestNamespace)

	resp, err := c.CallScripted(ctx, http.MethodPost, path, []byte("{}"))
	if err != nil {
		t.Fatal(err)
	}
	var env struct {
		Result events.SelfTestOutcome `json:"result"`
	}
	if resp.Status != http.StatusOK || json.Unmarshal(resp.Body, &env) != nil || env.Result.Stage != events.SelfTestStageConfig {
		t.Fatalf("answer %d %s: want 200 with the resource's result", resp.Status, resp.Body)
	}

	if err := sim.SetSelfTest(snsim.SelfTestOptions{NoRole: true}); err != nil {
		t.Fatal(err)
	}
	_, err = c.CallScripted(ctx, http.MethodPost, path, []byte("{}"))
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 403 || ae.Message != "User Not Authorized" || ae.Table != path || ae.Hint != "" || !errors.Is(err, ErrForbidden) {
		t.Fatalf("403: %v (%+v), want an *APIError naming the path, without a Table API hint", err, ae)
	}
	if n := sim.RequestCount(http.MethodPost, path, 403); n != 1 {
		t.Errorf("the refused POST was sent %d times, want 1", n)
	}
	if err := sim.SetSelfTest(snsim.SelfTestOptions{Missing: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CallScripted(ctx, http.MethodPost, path, nil); !errors.Is(err, ErrBadRequest) {
		t.Errorf("no such resource: %v, want ErrBadRequest", err)
	}
	for _, bad := range []string{"api/x/y", "/api/now/table/incident", "/api/x/y?sysparm_limit=1"} {
		if _, err := c.CallScripted(ctx, http.MethodGet, bad, nil); err == nil {
			t.Errorf("path %q accepted", bad)
		}
	}
}
