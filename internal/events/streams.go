package events

import (
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamOptions tunes the stream definitions; zero values take the defaults.
type StreamOptions struct {
	Replicas        int           // 1 for a single node, 3 on a cluster
	DuplicateWindow time.Duration // SN_EVENTS de-duplication window (default 1h)
	MaxAge          time.Duration // retention of event streams (default 7 days)
	DLQMaxAge       time.Duration // retention of dead letters (default 30 days)

	// BRIDGE_RESULTS' limits: the outcome of each app change waits there
	// for the app (bridge.result.>), the oldest going first when a limit
	// is reached. Zero takes the default: 7 days, no limit on the count or
	// the size (like the other streams; a size limit reserves that much of
	// the server's store).
	ResultsMaxAge   time.Duration
	ResultsMaxMsgs  int64
	ResultsMaxBytes int64
}

// DefaultResultsMaxAge is how long BRIDGE_RESULTS keeps a result.
const DefaultResultsMaxAge = 7 * 24 * time.Hour

// BRIDGE_TRACE's bounds: entries older than TraceMaxAge go, and so do a
// record's oldest beyond TraceMaxPerRecord, and the stream's oldest beyond
// TraceMaxBytes.
const (
	TraceMaxAge       = 7 * 24 * time.Hour
	TraceMaxBytes     = 1 << 30
	TraceMaxPerRecord = 200
)

func (o StreamOptions) withDefaults() StreamOptions {
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.DuplicateWindow <= 0 {
		o.DuplicateWindow = time.Hour
	}
	if o.MaxAge <= 0 {
		o.MaxAge = 7 * 24 * time.Hour
	}
	if o.DLQMaxAge <= 0 {
		o.DLQMaxAge = 30 * 24 * time.Hour
	}
	if o.ResultsMaxAge <= 0 {
		o.ResultsMaxAge = DefaultResultsMaxAge
	}
	o.ResultsMaxMsgs = max(o.ResultsMaxMsgs, 0)
	o.ResultsMaxBytes = max(o.ResultsMaxBytes, 0)
	return o
}

// Streams returns the bridge's stream definitions (SPEC §3). The JSON files in
// deploy/nats/ are these, rendered with the default options; a test keeps
// them equal.
func Streams(o StreamOptions) []jetstream.StreamConfig {
	o = o.withDefaults()
	base := func(name, desc string, subjects ...string) jetstream.StreamConfig {
		return jetstream.StreamConfig{
			Name:        name,
			Description: desc,
			Subjects:    subjects,
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    o.Replicas,
			MaxAge:      o.MaxAge,
			Duplicates:  o.DuplicateWindow,
			Discard:     jetstream.DiscardOld,
			MaxMsgSize:  2 << 20,
			AllowDirect: true,
		}
	}
	dlq := base(StreamDLQ, "Dead letters of both pipelines, with the reason in headers", DLQSubjects)
	dlq.MaxAge = o.DLQMaxAge
	// Results are de-duplicated on (external id, app version, outcome)
	// within the duplicate window: a redelivered app change publishes no
	// second result.
	results := base(StreamResults, "The outcome of each SaaS app change written back to ServiceNow (created, updated, rejected, ...)", ResultsSubjects)
	results.MaxAge = o.ResultsMaxAge
	results.Duplicates = min(o.DuplicateWindow, o.ResultsMaxAge) // JetStream refuses a window beyond the retention
	results.MaxMsgs = o.ResultsMaxMsgs
	results.MaxBytes = o.ResultsMaxBytes
	// The decision log: a record's story under one subject, bounded per
	// record, in age and in size (bridge trace; docs/operations.md).
	trace := base(StreamTrace, "What the bridge decided about each record, per record (bridge trace)", TraceSubjects)
	trace.MaxAge = TraceMaxAge
	trace.MaxBytes = TraceMaxBytes
	trace.MaxMsgsPerSubject = TraceMaxPerRecord
	trace.Duplicates = time.Minute // entries carry no message id
	return []jetstream.StreamConfig{
		base(StreamSN, "ServiceNow record changes from business-rule webhooks and reconcile", SNSubjects),
		base(StreamApp, "SaaS app changes to write back to ServiceNow", AppSubjects),
		base(StreamApply, "ServiceNow changes mapped for the SaaS app (NATS applier)", ApplySubjects),
		dlq,
		results,
		trace,
	}
}

// Buckets returns the bridge's KV bucket definitions.
func Buckets(o StreamOptions) []jetstream.KeyValueConfig {
	o = o.withDefaults()
	return []jetstream.KeyValueConfig{
		{Bucket: BucketLinks, Description: "external_id <-> table/sys_id links", History: 1, Storage: jetstream.FileStorage, Replicas: o.Replicas},
		{Bucket: BucketState, Description: "last seen versions, reconcile watermarks, leases", History: 1, Storage: jetstream.FileStorage, Replicas: o.Replicas, LimitMarkerTTL: time.Second},
	}
}

// ObjectStores returns the bridge's object store buckets: the attachments'
// files, kept as long as the event streams keep the messages naming them
// (MaxAge), so a replay or a redelivery finds its file.
func ObjectStores(o StreamOptions) []jetstream.ObjectStoreConfig {
	o = o.withDefaults()
	return []jetstream.ObjectStoreConfig{
		{Bucket: BucketAttachments, Description: "files of attachments on their way between ServiceNow and the app", TTL: o.MaxAge, Storage: jetstream.FileStorage, Replicas: o.Replicas},
	}
}
