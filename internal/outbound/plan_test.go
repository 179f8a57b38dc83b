package outbound

import (
	"maps"
	"testing"
	"time"
)

func TestPlan(t *testing.T) {
	t0 := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
	pol := func(p Policy) func(string) Policy { return func(string) Policy { return p } }
	tests := []struct {
		name      string
		in        planInput
		want      map[string]string
		conflicts int
	}{
		{
			name: "only fields that differ from what ServiceNow last said",
			in: planInput{
				Desired: map[string]string{"short_description": "Email down", "state": "2", "urgency": "1"},
				Base:    map[string]string{"short_description": "Email down", "state": "1", "urgency": "1"},
				Current: map[string]string{"short_description": "Email down", "state": "1", "urgency": "1"},
			},
			want: map[string]string{"state": "2"},
		},
		{
			name: "the app echoing what it was told writes nothing",
			in: planInput{
				Desired: map[string]string{"short_description": "A", "state": "2"},
				Base:    map[string]string{"short_description": "A", "state": "2"},
			},
			want: map[string]string{},
		},
		{
			name: "a stale app value does not revert a ServiceNow change",
			in: planInput{
				Desired: map[string]string{"short_description": "old", "state": "3"},
				Base:    map[string]string{"short_description": "old", "state": "1"},
				Current: map[string]string{"short_description": "new by human", "state": "1"},
			},
			want: map[string]string{"state": "3"},
		},
		{
			name: "both changed, servicenow_wins keeps ServiceNow's value",
			in: planInput{
				Desired: map[string]string{"short_description": "saas"},
				Base:    map[string]string{"short_description": "base"},
				Current: map[string]string{"short_description": "sn"},
				Policy:  pol(ServiceNowWins), SNUpdatedAt: t0, AppUpdatedAt: t0.Add(time.Hour),
			},
			want: map[string]string{}, conflicts: 1,
		},
		{
			name: "both changed, saas_wins writes the app's value",
			in: planInput{
				Desired: map[string]string{"short_description": "saas"},
				Base:    map[string]string{"short_description": "base"},
				Current: map[string]string{"short_description": "sn"},
				Policy:  pol(SaaSWins), SNUpdatedAt: t0.Add(time.Hour), AppUpdatedAt: t0,
			},
			want: map[string]string{"short_description": "saas"}, conflicts: 1,
		},
		{
			name: "newest_wins: the app's later change wins",
			in: planInput{
				Desired: map[string]string{"short_description": "saas"},
				Base:    map[string]string{"short_description": "base"},
				Current: map[string]string{"short_description": "sn"},
				Policy:  pol(NewestWins), SNUpdatedAt: t0, AppUpdatedAt: t0.Add(2 * time.Second),
			},
			want: map[string]string{"short_description": "saas"}, conflicts: 1,
		},
		{
			name: "newest_wins: a tie within ServiceNow's second goes to ServiceNow",
			in: planInput{
				Desired: map[string]string{"short_description": "saas"},
				Base:    map[string]string{"short_description": "base"},
				Current: map[string]string{"short_description": "sn"},
				Policy:  pol(NewestWins), SNUpdatedAt: t0, AppUpdatedAt: t0.Add(900 * time.Millisecond),
			},
			want: map[string]string{}, conflicts: 1,
		},
		{
			name: "both changed to the same value is no conflict",
			in: planInput{
				Desired: map[string]string{"state": "2"},
				Base:    map[string]string{"state": "1"},
				Current: map[string]string{"state": "2"},
			},
			want: map[string]string{},
		},
		{
			name: "journal entries are appended even when the plain diff is empty",
			in: planInput{
				Desired: map[string]string{"state": "2"},
				Journal: map[string]string{"comments": "Looking into it", "work_notes": ""},
				Base:    map[string]string{"state": "2", "comments": ""},
			},
			want: map[string]string{"comments": "Looking into it"},
		},
		{
			name: "a journal entry equal to the one last synced is an echo",
			in: planInput{
				Journal: map[string]string{"comments": "Looking into it"},
				Base:    map[string]string{"comments": "Looking into it"},
			},
			want: map[string]string{},
		},
		{
			name: "unknown base: write what differs from ServiceNow now",
			in: planInput{
				Desired: map[string]string{"state": "2", "urgency": "1"},
				Current: map[string]string{"state": "1", "urgency": "1"},
			},
			want: map[string]string{"state": "2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.in.Policy == nil {
				tt.in.Policy = pol(NewestWins)
			}
			got := plan(tt.in)
			if !maps.Equal(got.Patch, tt.want) {
				t.Errorf("patch = %v, want %v", got.Patch, tt.want)
			}
			if len(got.Conflicts) != tt.conflicts {
				t.Errorf("conflicts = %v, want %d", got.Conflicts, tt.conflicts)
			}
		})
	}
}

func TestProgressKey(t *testing.T) {
	if got := progressKey("ticket", "TCK-1042"); got != "writeback.ticket.TCK-1042" {
		t.Errorf("progressKey = %q", got)
	}
	if got := progressKey("ticket", "a b/c"); got != "writeback.ticket.b64-YSBiL2M" {
		t.Errorf("progressKey of an id with spaces = %q", got)
	}
}
