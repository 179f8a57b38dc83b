package nowbridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/objstream"
	"github.com/nowbridge/nowbridge/sdk/wire"
)

// Attachments: files go both ways through the bridge's JetStream object
// store bucket (wire.BucketAttachments), never inside messages. The app
// puts a file there and announces it (PutAttachment); ServiceNow's files
// arrive as AttachmentMessages (ConsumeAttachments) whose bytes the app
// reads from the bucket (OpenAttachment). The same content on one record is
// one file on the other side; see docs/integrating.md.

// AttachmentMessage is one file added to or removed from a record
// (app.<entity>.attachment, bridge.apply.<entity>.attachment).
type AttachmentMessage = wire.AttachmentMessage

// ResultAttachment is the file a Result of an attachment message is about.
type ResultAttachment = wire.ResultAttachment

// Attachment actions (AttachmentMessage.Action).
const (
	AttachmentAdd    = wire.AttachmentAdd
	AttachmentRemove = wire.AttachmentRemove
)

// NewAttachment is a file the app attaches to one of its records.
type NewAttachment struct {
	ExternalID   string // the app's record (required)
	SysID        string // the ServiceNow record, for one the app has not linked yet
	AttachmentID string // the app's id of the file (required; one per file, never reused)
	FileName     string // required
	ContentType  string // default: application/octet-stream
	// Object is the file's name in the bucket (default
	// "app/<entity>/<external id>/<attachment id>").
	Object string
}

// AttachmentRef names a file of the app's to remove: its AttachmentID, or
// the AttachmentSysID of a file the bridge handed the app.
type AttachmentRef struct {
	ExternalID      string // the app's record (required)
	SysID           string
	AttachmentID    string
	AttachmentSysID string
}

// PutAttachment streams r into the bridge_attachments bucket and publishes
// the add on app.<entity>.attachment once the bucket holds every byte; r is
// read once, never whole in memory. The bridge uploads the file to the
// ServiceNow record and answers with one Result (Action "attachment",
// Result.Attachment set) on bridge.result.<entity>.<outcome>: created,
// unchanged (the record has that content already), stale, or rejected
// with the reason (larger than BRIDGE_ATTACHMENT_MAX_BYTES or the
// instance allows, a refused content type, ...). Calling it again for the
// same AttachmentID is safe: the message is stored once.
func (c *Client) PutAttachment(ctx context.Context, entity string, a NewAttachment, r io.Reader) (Published, error) {
	switch {
	case !wire.ValidEntity(entity):
		return Published{}, invalidf("entity %q is not a lowercase name of letters, digits and _", entity)
	case a.ExternalID == "" || a.AttachmentID == "" || a.FileName == "":
		return Published{}, invalidf("an attachment needs ExternalID, AttachmentID and FileName")
	case a.SysID != "" && !sysIDRe.MatchString(a.SysID):
		return Published{}, invalidf("sys_id %q is not 32 lowercase hex characters", a.SysID)
	}
	if a.ContentType == "" {
		a.ContentType = "application/octet-stream"
	}
	if a.Object == "" {
		a.Object = AttachmentObject(entity, a.ExternalID, a.AttachmentID)
	}
	obj, err := c.attachments(ctx)
	if err != nil {
		return Published{}, err
	}
	info, err := obj.Put(ctx, jetstream.ObjectMeta{
		Name: a.Object, Description: a.FileName,
		Headers:  nats.Header{"Content-Type": []string{a.ContentType}},
		Metadata: map[string]string{"file_name": a.FileName, "entity": entity, "external_id": a.ExternalID, "attachment_id": a.AttachmentID},
	}, r)
	if err != nil {
		return Published{}, fmt.Errorf("put %s in %s (nothing stored; safe to retry): %w", a.Object, wire.BucketAttachments, err)
	}
	return c.publishAttachment(ctx, entity, &AttachmentMessage{
		Action: AttachmentAdd, ExternalID: a.ExternalID, SysID: a.SysID, AttachmentID: a.AttachmentID,
		Object: a.Object, FileName: a.FileName, ContentType: a.ContentType, Size: int64(info.Size), Digest: info.Digest,
	})
}

// RemoveAttachment publishes the removal of one of the app's files on
// app.<entity>.attachment. ServiceNow's copy is deleted once the app holds
// no other copy of the same content on the record; the Result says
// updated (deleted), unchanged (another copy stays) or stale.
func (c *Client) RemoveAttachment(ctx context.Context, entity string, ref AttachmentRef) (Published, error) {
	switch {
	case !wire.ValidEntity(entity):
		return Published{}, invalidf("entity %q is not a lowercase name of letters, digits and _", entity)
	case ref.ExternalID == "" || (ref.AttachmentID == "" && ref.AttachmentSysID == ""):
		return Published{}, invalidf("a removal needs ExternalID and AttachmentID or AttachmentSysID")
	}
	return c.publishAttachment(ctx, entity, &AttachmentMessage{
		Action: AttachmentRemove, ExternalID: ref.ExternalID, SysID: ref.SysID,
		AttachmentID: ref.AttachmentID, AttachmentSysID: ref.AttachmentSysID,
	})
}

// AttachmentObject is PutAttachment's default object name.
func AttachmentObject(entity, externalID, attachmentID string) string {
	return "app/" + entity + "/" + externalID + "/" + attachmentID
}

func (c *Client) publishAttachment(ctx context.Context, entity string, m *AttachmentMessage) (Published, error) {
	key := m.AttachmentID
	if key == "" {
		key = "sn-" + m.AttachmentSysID
	}
	out := Published{Subject: wire.AppAttachmentSubject(entity), MsgID: wire.AppAttachmentMsgID(entity, m.ExternalID, key, m.Action)}
	body, err := m.Body()
	if err != nil {
		return out, fmt.Errorf("encode %s: %w", out.MsgID, err)
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
		return out, fmt.Errorf("publish %s: %w (safe to retry)", out.MsgID, err)
	}
	out.Seq, out.Duplicate = ack.Sequence, ack.Duplicate
	c.log.Debug("attachment message published", "subject", out.Subject, "msg_id", out.MsgID, "seq", ack.Sequence, "duplicate", ack.Duplicate)
	return out, nil
}

// attachmentStore is the client's handle on the bucket, opened once.
type attachmentStore struct {
	mu  sync.Mutex
	obj jetstream.ObjectStore
}

func (c *Client) attachments(ctx context.Context) (jetstream.ObjectStore, error) {
	c.att.mu.Lock()
	defer c.att.mu.Unlock()
	if c.att.obj != nil {
		return c.att.obj, nil
	}
	obj, err := c.js.ObjectStore(ctx, wire.BucketAttachments)
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w (the bridge creates it at start: is it running, on this NATS server?)", wire.BucketAttachments, err)
	}
	c.att.obj = obj
	return obj, nil
}

// ErrAttachmentGone is OpenAttachment's error for an object no longer in
// the bucket: older than the bucket's retention (the bridge's event
// streams'), or never there.
var ErrAttachmentGone = errors.New("attachment object not in the bucket")

// OpenAttachment opens the bytes of an add's object for reading, streamed
// a few chunks ahead at most whatever the file's size (close it). The
// digest is checked as the last bytes are read: a mismatch is an error
// instead of io.EOF, so a file read to its end is whole. m.Digest, when
// set, must be the object's.
func (c *Client) OpenAttachment(ctx context.Context, m *AttachmentMessage) (io.ReadCloser, error) {
	if m.Object == "" {
		return nil, fmt.Errorf("attachment message %s names no object", m.MsgID)
	}
	// objstream reads a few chunks ahead at most, whatever the size.
	res, info, err := objstream.Open(ctx, c.js, wire.BucketAttachments, m.Object)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrAttachmentGone, m.Object)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s in %s: %w", m.Object, wire.BucketAttachments, err)
	}
	if m.Digest != "" && info.Digest != m.Digest {
		_ = res.Close()
		return nil, fmt.Errorf("object %s holds %s, the message says %s: it was replaced since", m.Object, info.Digest, m.Digest)
	}
	return res, nil
}

// AttachmentHandler applies one ServiceNow file change to the app: for an
// add, store the file (OpenAttachment) on the record (m.ExternalID, or
// m.SysID while the app has not linked it); for a remove, delete every copy
// of that content on the record (m.Digest; m.AttachmentSysID is the id the
// add named, m.AttachmentIDs the app's own ids the bridge knows of). Return
// errors as for ApplyHandler. Messages of one record come one at a time,
// in order; a redelivered one comes again, so handle each idempotently.
type AttachmentHandler func(ctx context.Context, m *AttachmentMessage) error

// ConsumeAttachments applies ServiceNow's file changes to the app: a
// durable consumer (opts.Durable, default "app-attachments") on
// bridge.apply.<entity>.attachment of opts.Entities (default all), run
// like Consume's (one record at a time, ack after the handler, one
// instance of the app consuming at a time). It returns nil after a clean
// stop. Consume skips these messages: run both.
func (c *Client) ConsumeAttachments(ctx context.Context, h AttachmentHandler, opts ConsumeOptions) error {
	if h == nil {
		return errors.New("nowbridge: ConsumeAttachments needs a handler")
	}
	if opts.Durable == "" {
		opts.Durable = "app-attachments"
	}
	opts = opts.withDefaults(c)
	if err := checkDurable(opts.Durable); err != nil {
		return err
	}
	filters := []string{wire.ApplyAttachmentSubject("*")}
	if len(opts.Entities) > 0 {
		var err error
		if filters, err = entitySubjects(opts.Entities, func(e, _ string) string { return wire.ApplyAttachmentSubject(e) }); err != nil {
			return err
		}
	}
	log := opts.Logger
	return durableConsumer[*AttachmentMessage]{
		js: c, stream: wire.StreamApply, name: opts.Durable, filters: filters,
		desc:    "nowbridge SDK: ServiceNow attachments applied to the app",
		workers: opts.Workers, ackWait: opts.AckWait, takeover: opts.Takeover,
		retryBase: opts.RetryBase, retryMax: opts.RetryMax,
		h: &handler[*AttachmentMessage]{
			decode: decodeAttachment,
			describe: func(m *AttachmentMessage) []any {
				return []any{"msg_id", m.MsgID, "action", m.Action, "external_id", m.ExternalID, "sys_id", m.SysID, "attachment_sys_id", m.AttachmentSysID}
			},
			handle: func(ctx context.Context, m *AttachmentMessage) error { return h(ctx, m) },
			log:    log.With(slog.String("part", "attachments")),
		},
	}.run(ctx)
}

// decodeAttachment parses a bridge.apply.<entity>.attachment message; its
// record (table and sys_id) orders it.
func decodeAttachment(msg jetstream.Msg) (*AttachmentMessage, string, error) {
	m := &AttachmentMessage{}
	if err := json.Unmarshal(msg.Data(), m); err != nil {
		return nil, "", fmt.Errorf("decode %s: %w", msg.Subject(), err)
	}
	if entity, _, ok := subjectParts(msg.Subject(), "bridge.apply."); ok && m.Entity == "" {
		m.Entity = entity
	}
	m.MsgID = msg.Headers().Get(wire.HeaderMsgID)
	key := ""
	if m.SysID != "" {
		key = m.Table + "/" + m.SysID
	}
	return m, key, nil
}
