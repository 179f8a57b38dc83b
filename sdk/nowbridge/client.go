package nowbridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/sdk/wire"
)

// Config tunes a Client; the zero value takes the defaults.
type Config struct {
	// Logger receives the SDK's logs (default slog.Default()). It never logs
	// field values, only ids, subjects and versions.
	Logger *slog.Logger
	// PublishTimeout bounds how long Publish waits for APP_EVENTS' ack when
	// ctx has no deadline of its own (default 5s).
	PublishTimeout time.Duration
	// RecentRecords is how many records the client remembers the last
	// published version of, to refuse a version going backwards (default
	// 100000; about 60 bytes each).
	RecentRecords int
}

// Validate reports an invalid setting.
func (c Config) Validate() error {
	if c.PublishTimeout < 0 {
		return fmt.Errorf("nowbridge: PublishTimeout %v is negative; leave it 0 for the default 5s", c.PublishTimeout)
	}
	if c.RecentRecords < 0 {
		return fmt.Errorf("nowbridge: RecentRecords %d is negative; leave it 0 for the default 100000", c.RecentRecords)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = 5 * time.Second
	}
	if c.RecentRecords == 0 {
		c.RecentRecords = 100_000
	}
	return c
}

// Client is an app's connection to the bridge over JetStream: it publishes
// the app's changes (Publish, PublishDelete), consumes ServiceNow's
// (Consume) and follows the outcomes of its own (Results). It is safe for
// concurrent use.
type Client struct {
	js  jetstream.JetStream
	cfg Config
	log *slog.Logger
	now func() time.Time

	mu       sync.Mutex
	assigned int64 // the last version Publish assigned
	recent   *lru[published]
	seed     maphash.Seed

	att attachmentStore // the attachments' bucket, opened on first use
}

// published is what the client remembers of a record's last publish.
type published struct {
	version int64
	digest  uint64 // of the action, sys_id and fields
}

// New returns a client on a JetStream context (jetstream.New(nc)). The
// bridge creates the streams it uses (APP_EVENTS, BRIDGE_APPLY,
// BRIDGE_RESULTS) at start; the client creates none of them.
func New(js jetstream.JetStream, cfg Config) (*Client, error) {
	if js == nil {
		return nil, errors.New("nowbridge: New needs a JetStream context: jetstream.New(nc)")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	return &Client{
		js: js, cfg: cfg, log: cfg.Logger, now: time.Now,
		recent: newLRU[published](cfg.RecentRecords),
		seed:   maphash.MakeSeed(),
	}, nil
}

// Published says where an app change went.
type Published struct {
	Subject string // app.<entity>.<action>
	MsgID   string // its Nats-Msg-Id: wire.AppMsgID
	Version int64  // the version sent, assigned or the app's
	Seq     uint64 // its sequence in APP_EVENTS
	// Duplicate is true when APP_EVENTS already held this message id (a
	// retried publish): it is stored once and written back once.
	Duplicate bool
}

// Publish sends an upsert of one of the app's records to the bridge, on
// app.<entity>.upsert, and returns once APP_EVENTS stored it. The bridge
// writes it to ServiceNow (creating the record on the first upsert of an
// external id, unless SysID links an existing one) and answers with one
// Result.
//
// Version orders the changes of a record. Leave it 0 and Publish assigns
// one: the larger of the client's last assigned version plus one and the
// current time in microseconds since 1970, so versions grow within the
// process and across restarts and instances as far as clocks agree. Set it
// from a counter the app keeps per record (a row version column) when more
// than one process publishes changes of the same record: then the app's own
// order decides, and Publish checks that it does not go backwards
// (ErrVersionNotNewer). Do not mix both for one entity: an assigned version
// (about 1.8e15) is larger than any row version.
//
// Publishing the same version again with the same content is safe (a retry
// after an error: pass Published.Version back, which is set even when err
// is not nil); JetStream stores it once. UpdatedAt defaults to now.
func (c *Client) Publish(ctx context.Context, entity string, ch AppChange) (Published, error) {
	return c.publish(ctx, entity, wire.AppUpsert, ch)
}

// PublishDelete sends the deletion of one of the app's records (on
// app.<entity>.delete). What the bridge does with it is the mapping's choice
// (ServiceNow records are usually resolved or closed, not deleted). A delete
// is a version like any other: newer than the record's last upsert.
func (c *Client) PublishDelete(ctx context.Context, entity string, ch AppChange) (Published, error) {
	return c.publish(ctx, entity, wire.AppDelete, ch)
}

func (c *Client) publish(ctx context.Context, entity, action string, ch AppChange) (Published, error) {
	if err := checkChange(entity, ch); err != nil {
		return Published{}, err
	}
	digest, err := c.digest(action, ch)
	if err != nil {
		return Published{}, err
	}
	version, err := c.version(entity, ch.ExternalID, ch.Version, digest)
	if err != nil {
		return Published{Version: ch.Version}, err
	}
	ch.Version = version
	if ch.UpdatedAt.IsZero() {
		ch.UpdatedAt = c.now().UTC()
	}
	out := Published{
		Subject: wire.AppSubject(entity, action),
		MsgID:   wire.AppMsgID(entity, ch.ExternalID, version, action),
		Version: version,
	}
	body, err := json.Marshal(ch)
	if err != nil {
		return out, fmt.Errorf("encode app change %s: %w", out.MsgID, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.PublishTimeout)
		defer cancel()
	}
	msg := &nats.Msg{Subject: out.Subject, Data: body, Header: nats.Header{}}
	msg.Header.Set(wire.HeaderMsgID, out.MsgID)
	ack, err := c.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(wire.StreamApp))
	if err != nil {
		if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
			return out, fmt.Errorf("publish %s: no JetStream stream %s answers on %s (is the bridge running? it creates the stream at start): %w", out.MsgID, wire.StreamApp, out.Subject, err)
		}
		return out, fmt.Errorf("publish %s: %w (safe to retry with Version %d)", out.MsgID, err, version)
	}
	out.Seq, out.Duplicate = ack.Sequence, ack.Duplicate
	c.log.Debug("app change published", "subject", out.Subject, "external_id", ch.ExternalID, "version", version, "seq", ack.Sequence, "duplicate", ack.Duplicate)
	return out, nil
}

// digest identifies a change's content, to tell a retry from a second change
// under the same version.
func (c *Client) digest(action string, ch AppChange) (uint64, error) {
	fields, err := json.Marshal(ch.Fields) // map keys sorted: stable
	if err != nil {
		return 0, fmt.Errorf("encode fields of %s: %w", ch.ExternalID, err)
	}
	var h maphash.Hash
	h.SetSeed(c.seed)
	h.WriteString(action)
	h.WriteByte(0)
	h.WriteString(ch.SysID)
	h.WriteByte(0)
	h.Write(fields)
	return h.Sum64(), nil
}

// version assigns or checks the change's version under the client's lock.
func (c *Client) version(entity, externalID string, supplied int64, digest uint64) (int64, error) {
	key := entity + "\x00" + externalID
	c.mu.Lock()
	defer c.mu.Unlock()
	v := supplied
	if v == 0 {
		v = max(c.assigned+1, c.now().UnixMicro())
		c.assigned = v
	} else if prev, ok := c.recent.get(key); ok {
		switch {
		case v < prev.version:
			return 0, fmt.Errorf("%w: %s %q version %d is lower than %d, published before by this client; versions of a record must grow (leave Version 0 to have one assigned)", ErrVersionNotNewer, entity, externalID, v, prev.version)
		case v == prev.version && digest != prev.digest:
			return 0, fmt.Errorf("%w: %s %q version %d was already published with other content; give this change a new version", ErrVersionNotNewer, entity, externalID, v)
		}
	}
	c.recent.put(key, published{version: v, digest: digest})
	return v, nil
}

var sysIDRe = regexp.MustCompile(`^[0-9a-f]{32}$`)

// maxExternalID is the length of ServiceNow's correlation_id, where the
// bridge keeps the link: a longer id would be cut and the link lost.
const maxExternalID = 100

// checkChange refuses what the bridge's writeback could never apply.
func checkChange(entity string, ch AppChange) error {
	if !wire.ValidEntity(entity) {
		return invalidf("entity %q is not a lowercase name of letters, digits and _ (e.g. %q); it names the mapping file's entity", entity, wire.DefaultEntity)
	}
	id := ch.ExternalID
	switch {
	case id == "":
		return invalidf("external_id is empty: set it to the app's id of the record")
	case !utf8.ValidString(id):
		return invalidf("external_id %q is not valid UTF-8", id)
	case utf8.RuneCountInString(id) > maxExternalID:
		return invalidf("external_id %.20q... is %d characters; ServiceNow's correlation_id, which keeps the link, holds %d", id, utf8.RuneCountInString(id), maxExternalID)
	case strings.IndexFunc(id, unicode.IsControl) >= 0:
		return invalidf("external_id %q contains a control character", id)
	case strings.TrimSpace(id) != id:
		return invalidf("external_id %q starts or ends with white space", id)
	case len(id) >= len("javascript:") && strings.EqualFold(id[:len("javascript:")], "javascript:"):
		return invalidf("external_id %q starts with javascript:, which ServiceNow would run as a script in the bridge's lookups", id)
	}
	if ch.SysID != "" && !sysIDRe.MatchString(ch.SysID) {
		return invalidf("sys_id %q of %s is not 32 lowercase hex characters; leave it empty unless linking an existing ServiceNow record", ch.SysID, id)
	}
	if ch.Version < 0 {
		return invalidf("version %d of %s is negative; leave it 0 to have one assigned", ch.Version, id)
	}
	return nil
}
