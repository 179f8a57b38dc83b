package console

import (
	"context"
	"encoding/json"
	"time"
)

// Tracer finds a record's timeline: internal/trace's Store. Until the
// decision log is wired, Config.Trace is nil and the trace page says so.
type Tracer interface {
	Timeline(ctx context.Context, key string) (*Timeline, error)
}

// Timeline mirrors internal/trace.Timeline (issue 15's contract) until that
// package lands.
type Timeline struct {
	Table, SysID, Number, Entity, ExternalID string
	State                                    any
	Steps                                    []Step
}

// Step mirrors internal/trace.Step.
type Step struct {
	Time                    time.Time
	Stage, Source, Decision string
	Reason                  string
	Version, AppVersion     int64
	Stream                  string
	Seq                     uint64
	Message                 json.RawMessage
}
