package console

import (
	"context"
	"maps"
	"slices"

	"github.com/nowbridge/nowbridge/internal/trace"
)

// Tracer finds a record's timeline: internal/trace's Store. Nil in
// Config.Trace: the trace page says the trace is not available.
type Tracer interface {
	Timeline(ctx context.Context, key string) (*trace.Timeline, error)
}

// traceState is a timeline's bridge_state and bridge_links entries, laid
// out for the page.
type traceState struct {
	trace.RecordState
	Fields []field // bridge_state's fields, sorted
}

type field struct{ Name, Value string }

func stateOf(tl *trace.Timeline) traceState {
	rs, _ := tl.State.(trace.RecordState)
	out := traceState{RecordState: rs}
	if rs.State != nil {
		for _, k := range slices.Sorted(maps.Keys(rs.State.Fields)) {
			out.Fields = append(out.Fields, field{k, rs.State.Fields[k]})
		}
	}
	return out
}
