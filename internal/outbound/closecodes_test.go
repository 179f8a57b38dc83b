package outbound

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/snclient"
)

// choiceList is an in-memory ChoiceReader: the close-code decision is pure
// logic over a list; the simulator-backed tests cover reading it.
type staticChoices struct {
	values []string
	err    error
	reads  atomic.Int32
}

func (s *staticChoices) Choices(_ context.Context, _, _ string) ([]snclient.Choice, error) {
	s.reads.Add(1)
	if s.err != nil {
		return nil, s.err
	}
	out := make([]snclient.Choice, len(s.values))
	for i, v := range s.values {
		out[i] = snclient.Choice{Value: v, Label: v, Sequence: i}
	}
	return out, nil
}

var (
	currentRelease = []string{"Duplicate", "Known error", "No resolution provided", "Resolved by caller", "Resolved by change",
		"Resolved by problem", "Resolved by request", "Solution provided", "Workaround provided", "User error"}
	olderRelease = []string{"Solved (Work Around)", "Solved (Permanently)", "Solved Remotely (Work Around)",
		"Solved Remotely (Permanently)", "Not Solved (Not Reproducible)", "Not Solved (Too Costly)", "Closed/Resolved by Caller"}
	incidentClose = &mapping.Close{States: []string{"6", "7"}, CodeField: "close_code", NotesField: "close_notes",
		PreferredCodes: []string{"Solution provided"}}
)

func TestCloseCodes_For(t *testing.T) {
	unreachable := errors.New("dial tcp: connection refused")
	tests := []struct {
		name     string
		choices  []string
		readErr  error
		override string
		current  string
		want     string
		wantErr  string
	}{
		{name: "current release picks the preferred code", choices: currentRelease, want: "Solution provided"},
		{name: "older release without the preferred code picks the first active choice", choices: olderRelease, want: "Solved (Work Around)"},
		{name: "override that is a choice", choices: currentRelease, override: "Workaround provided", want: "Workaround provided"},
		{name: "retired override is refused with the valid ones", choices: currentRelease, override: "Solved (Permanently)",
			wantErr: `BRIDGE_CLOSE_CODE "Solved (Permanently)" is not an active choice of incident.close_code on this instance`},
		{name: "the record's active code is kept", choices: currentRelease, current: "Duplicate", want: "Duplicate"},
		{name: "the record's retired code is replaced", choices: currentRelease, current: "Solved (Permanently)", want: "Solution provided"},
		{name: "no active choices", choices: nil, wantErr: "has no active choices"},
		{name: "unreadable choices with an override use it", readErr: unreachable, override: "Known error", want: "Known error"},
		{name: "unreadable choices keep the record's code", readErr: unreachable, current: "Duplicate", want: "Duplicate"},
		{name: "unreadable choices and nothing to fall back on", readErr: unreachable, wantErr: "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cc := NewCloseCodes(&staticChoices{values: tt.choices, err: tt.readErr}, tt.override, 0, nil)
			got, err := cc.For(context.Background(), "incident", incidentClose, tt.current)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("For = %q, %v; want an error containing %q", got, err, tt.wantErr)
				}
				if tt.readErr == nil && !errors.Is(err, ErrCloseCode) {
					t.Fatalf("error %v does not wrap ErrCloseCode: a retry could not fix it, so it must dead-letter", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("For = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestCloseCodes_RetiredOverrideErrorNamesTheValidChoices(t *testing.T) {
	cc := NewCloseCodes(&staticChoices{values: currentRelease}, "Solved (Permanently)", 0, nil)
	_, err := cc.Validate(context.Background(), "incident", incidentClose)
	for _, v := range currentRelease {
		if err == nil || !strings.Contains(err.Error(), `"`+v+`"`) {
			t.Fatalf("error %v does not name the valid choice %q", err, v)
		}
	}
}

func TestCloseCodes_CachedThenRefreshedStaleOnFailure(t *testing.T) {
	r := &staticChoices{values: currentRelease}
	cc := NewCloseCodes(r, "", time.Millisecond, nil)
	ctx := context.Background()
	for range 3 {
		if _, err := cc.For(ctx, "incident", incidentClose, ""); err != nil {
			t.Fatal(err)
		}
	}
	cc2 := NewCloseCodes(r, "", time.Hour, nil)
	r.reads.Store(0)
	for range 5 {
		if _, err := cc2.For(ctx, "incident", incidentClose, ""); err != nil {
			t.Fatal(err)
		}
	}
	if n := r.reads.Load(); n != 1 {
		t.Fatalf("5 closes within the TTL read sys_choice %d times, want 1", n)
	}
	// Past the TTL a failed refresh keeps the last list.
	time.Sleep(2 * time.Millisecond)
	r.err = errors.New("503 Service Unavailable")
	if got, err := cc.For(ctx, "incident", incidentClose, ""); err != nil || got != "Solution provided" {
		t.Fatalf("after a failed refresh For = %q, %v; want the cached Solution provided", got, err)
	}
}
