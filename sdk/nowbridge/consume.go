package nowbridge

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/sdk/wire"
)

// ApplyHandler applies one ServiceNow version of a record to the app. It
// returns nil once the app holds it; Permanent(err) when it never can (the
// message is terminated and logged); RetryAfter(err, d) or any other error
// to have it again later. It is never called for two messages of the same
// record at once, and sees a record's versions in order.
//
// m.ExternalID is "" for a record created in ServiceNow that the app has not
// linked yet: create the app's record, then link it by publishing an
// AppChange with its ExternalID and m.SysID (over HTTP, set m.ExternalID
// instead: the receiver answers it to the bridge).
type ApplyHandler func(ctx context.Context, m *ApplyMessage) error

// ConsumeOptions tunes Consume; the zero value takes the defaults.
type ConsumeOptions struct {
	// Durable names the app's durable consumer on BRIDGE_APPLY (default
	// "app"). JetStream keeps its position: a restarted app continues where
	// it stopped. Instances of the app using the same name share it, one
	// consuming at a time (see Consume).
	Durable string
	// Entities limits the consumer to these entities (default: all).
	Entities []string
	// Workers is how many handlers run at once (default 8); one record is
	// never on two workers.
	Workers int
	// Store is the version guard's memory (default NewMemoryStore(0)). Use
	// a KVStore, or one in the app's database, to guard across restarts.
	Store VersionStore
	// AckWait is how long JetStream waits for an answer before delivering a
	// message again (default 30s). The SDK keeps a message it holds owned
	// with in-progress acks, so a handler may run longer.
	AckWait time.Duration
	// RetryBase and RetryMax shape the delay before a failed message comes
	// back: between half and all of RetryBase*2^(deliveries-1), capped at
	// RetryMax (defaults 1s and 1m).
	RetryBase, RetryMax time.Duration
	// Takeover is how long a standby instance waits before it takes over
	// from an active instance that stopped pulling without a clean stop (a
	// crash, a partition); default 2m. A clean stop hands over at once.
	Takeover time.Duration
	// Logger overrides the client's.
	Logger *slog.Logger
}

func (o ConsumeOptions) withDefaults(c *Client) ConsumeOptions {
	if o.Durable == "" {
		o.Durable = "app"
	}
	if o.Workers <= 0 {
		o.Workers = 8
	}
	if o.Store == nil {
		o.Store = NewMemoryStore(0)
	}
	if o.AckWait <= 0 {
		o.AckWait = 30 * time.Second
	}
	if o.RetryBase <= 0 {
		o.RetryBase = time.Second
	}
	if o.RetryMax <= 0 {
		o.RetryMax = time.Minute
	}
	if o.Takeover <= 0 {
		o.Takeover = 2 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = c.log
	}
	return o
}

func checkDurable(name string) error {
	if name == "" || strings.ContainsAny(name, ".*> \t\r\n") {
		return fmt.Errorf("nowbridge: durable name %q must be non-empty without '.', '*', '>' or white space", name)
	}
	return nil
}

func entitySubjects(entities []string, subject func(entity, token string) string) ([]string, error) {
	var out []string
	for _, e := range entities {
		if !wire.ValidEntity(e) {
			return nil, fmt.Errorf("nowbridge: entity %q is not a lowercase name of letters, digits and _ (e.g. %q)", e, wire.DefaultEntity)
		}
		out = append(out, subject(e, "*"))
	}
	return out, nil
}

// Consume applies ServiceNow's changes to the app: it consumes
// bridge.apply.> (stream BRIDGE_APPLY, written by the bridge's NATS applier)
// through a durable consumer and calls h for each message, until ctx ends.
// It returns nil after a clean stop, or an error when the consumer cannot be
// created (no BRIDGE_APPLY stream: the bridge is not running).
//
//   - One record on one worker: messages of one record (table and sys_id)
//     are handled one at a time and in stream order, while other records'
//     messages run on the other workers. A message that is retried holds
//     back the later messages of its record until it is through.
//   - The version guard: a message whose version does not supersede the
//     last one handled for its record (opts.Store) is acknowledged without
//     calling h. A delete carries the version of the record's last update
//     and still reaches h once.
//   - Ack after the handler: a message is acknowledged only after h returned
//     nil; an error hands it back with NakWithDelay and a growing delay
//     (RetryAfter's when given); Permanent terminates it (JetStream Term).
//     A panic in h is an error.
//   - Several instances: the consumer is pinned to one instance at a time
//     (a JetStream priority group); the others wait as standbys and take
//     over when it stops (at once after a clean stop, after opts.Takeover
//     otherwise), so order per record holds across instances too.
//
// At stop, Consume stops pulling, hands back the messages not started and
// gives the running handlers 10s before their context is cancelled.
func (c *Client) Consume(ctx context.Context, h ApplyHandler, opts ConsumeOptions) error {
	if h == nil {
		return fmt.Errorf("nowbridge: Consume needs a handler")
	}
	opts = opts.withDefaults(c)
	if err := checkDurable(opts.Durable); err != nil {
		return err
	}
	filters, err := entitySubjects(opts.Entities, wire.ApplySubject)
	if err != nil {
		return err
	}
	store, log := opts.Store, opts.Logger
	return durableConsumer[*ApplyMessage]{
		js: c, stream: wire.StreamApply, name: opts.Durable, filters: filters,
		desc:    "nowbridge SDK: ServiceNow changes applied to the app",
		workers: opts.Workers, ackWait: opts.AckWait, takeover: opts.Takeover,
		retryBase: opts.RetryBase, retryMax: opts.RetryMax,
		h: &handler[*ApplyMessage]{
			decode: decodeApply,
			describe: func(m *ApplyMessage) []any {
				return []any{"subject", m.Subject(), "msg_id", m.MsgID, "external_id", m.ExternalID, "sys_id", m.SysID, "version", m.Version}
			},
			handle: func(ctx context.Context, m *ApplyMessage) error {
				if m.Action == wire.ActionAttachment {
					return nil // a file, for ConsumeAttachments
				}
				return guarded(ctx, store, log, m, h)
			},
			log: log,
		},
	}.run(ctx)
}

// guarded calls h unless the store holds a version of m's record at least
// as new, and records m's version once h succeeded.
func guarded(ctx context.Context, store VersionStore, log *slog.Logger, m *ApplyMessage, h ApplyHandler) error {
	key := m.RecordKey()
	if key != "" {
		last, ok, err := store.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("version guard: %w", err) // retried: the store may come back
		}
		if ok && !last.Supersedes(m.Version, m.Action) {
			log.Debug("nowbridge: version already handled; skipped", "msg_id", m.MsgID, "key", key, "version", m.Version, "handled", last.Version)
			return nil
		}
	}
	if err := h(ctx, m); err != nil {
		return err
	}
	if key != "" {
		if err := store.Put(ctx, key, Handled{Version: m.Version, Deleted: m.Action == wire.ActionDelete}); err != nil {
			// The app holds the change: acknowledge it. A redelivery, rare
			// without a lost ack, would reach the handler again.
			log.Warn("nowbridge: version guard not updated; acknowledging anyway", "msg_id", m.MsgID, "key", key, "version", m.Version, "err", err)
		}
	}
	return nil
}

// decodeApply parses a bridge.apply.<entity>.<action> message. An
// attachment's (bridge.apply.<entity>.attachment) is not a record version:
// it decodes to its entity and action alone, which Consume skips.
func decodeApply(msg jetstream.Msg) (*ApplyMessage, string, error) {
	if wire.IsAttachmentSubject(msg.Subject()) {
		entity, _, _ := subjectParts(msg.Subject(), "bridge.apply.")
		return &ApplyMessage{Entity: entity, Action: wire.ActionAttachment, MsgID: msg.Headers().Get(wire.HeaderMsgID)}, "", nil
	}
	m := &ApplyMessage{}
	if err := json.Unmarshal(msg.Data(), m); err != nil {
		return nil, "", fmt.Errorf("decode %s: %w", msg.Subject(), err)
	}
	if entity, action, ok := subjectParts(msg.Subject(), "bridge.apply."); ok {
		if m.Entity == "" {
			m.Entity = entity
		}
		if m.Action == "" {
			m.Action = action
		}
	}
	m.MsgID = msg.Headers().Get(wire.HeaderMsgID)
	return m, m.RecordKey(), nil
}

// subjectParts splits "<prefix><entity>.<last>".
func subjectParts(subject, prefix string) (entity, last string, ok bool) {
	rest, found := strings.CutPrefix(subject, prefix)
	if !found {
		return "", "", false
	}
	entity, last, ok = strings.Cut(rest, ".")
	return entity, last, ok && !strings.Contains(last, ".")
}
