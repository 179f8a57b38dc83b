package dlq

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
)

// Failure says why a message is dead-lettered.
type Failure struct {
	Reason   string // what went wrong, one line
	Status   int    // HTTP status of the failed call, 0 if none
	Hint     string // what the operator should do
	Response string // the remote side's response body, if any
}

// NewMessage builds the BRIDGE_DLQ message for msg of a pipeline's
// consumer: the original body and user headers, plus the failure and where
// the message came from, in the headers Entry reads back. Header values are
// folded to one line and bounded, since NATS headers cannot hold line breaks.
func NewMessage(pipeline string, msg jetstream.Msg, meta *jetstream.MsgMetadata, f Failure) *nats.Msg {
	out := nats.NewMsg(events.DLQSubject(pipeline))
	out.Data = msg.Data()
	out.Header = events.DeadLetterHeaders(msg.Headers())
	out.Header.Set(events.HeaderDLQReason, oneLine(f.Reason, 512))
	if f.Status != 0 {
		out.Header.Set(events.HeaderDLQStatus, strconv.Itoa(f.Status))
	}
	if f.Hint != "" {
		out.Header.Set(events.HeaderDLQHint, oneLine(f.Hint, 1024))
	}
	if f.Response != "" {
		out.Header.Set(events.HeaderDLQResponse, oneLine(f.Response, 2048))
	}
	out.Header.Set(events.HeaderDLQSubject, msg.Subject())
	out.Header.Set(events.HeaderDLQStream, meta.Stream)
	out.Header.Set(events.HeaderDLQSeq, strconv.FormatUint(meta.Sequence.Stream, 10))
	// One id per origin message: a dead letter written twice (a crash
	// between publish and Term) is stored once.
	out.Header.Set(events.HeaderMsgID, fmt.Sprintf("%s:%s:%d", pipeline, meta.Stream, meta.Sequence.Stream))
	return out
}

// oneLine makes s safe for a NATS header value.
func oneLine(s string, limit int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > limit {
		s = strings.ToValidUTF8(s[:limit], "") + "…"
	}
	return s
}
