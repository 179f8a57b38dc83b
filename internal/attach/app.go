package attach

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/dlq"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/objstream"
	"github.com/nowbridge/nowbridge/sdk/wire"
)

// The app -> ServiceNow: an add on app.<entity>.attachment names an object
// the app put in bridge_attachments, which is uploaded to the record; a
// remove deletes ServiceNow's copies once the app holds none. Each message
// gets one final result on BRIDGE_RESULTS, like the app's record changes.

// errNotLinked: the record of an app's attachment is not in ServiceNow yet
// (its creation may still be on its way through the writeback).
var errNotLinked = errors.New("the record is not linked to a ServiceNow record yet")

// HintNotLinked is the dead letter's hint when the record never got linked.
const HintNotLinked = "the app's record was never linked to a ServiceNow record: publish its upsert first (or name its sys_id in the attachment message), then `bridge dlq retry`"

// decodeAppMessage parses an app.<entity>.attachment message.
func decodeAppMessage(subject string, data []byte) (*events.AttachmentMessage, error) {
	parts := strings.Split(subject, ".")
	if len(parts) != 3 || parts[0] != "app" || parts[2] != events.ActionAttachment || !wire.ValidEntity(parts[1]) {
		return nil, fmt.Errorf("subject %q is not app.<entity>.attachment", subject)
	}
	m := &events.AttachmentMessage{}
	if err := json.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("decode attachment message on %s: %w", subject, err)
	}
	m.Entity = parts[1]
	return m, nil
}

// check refuses what no retry can cure.
func checkAppMessage(m *events.AttachmentMessage) error {
	switch {
	case m.ExternalID == "":
		return errors.New("attachment message has no external_id: name the app's record")
	case m.SysID != "" && !events.ValidSysID(m.SysID):
		return fmt.Errorf("sys_id %q is not 32 lowercase hex characters", m.SysID)
	case m.AttachmentSysID != "" && !events.ValidSysID(m.AttachmentSysID):
		return fmt.Errorf("attachment_sys_id %q is not 32 lowercase hex characters", m.AttachmentSysID)
	}
	switch m.Action {
	case wire.AttachmentAdd:
		if m.AttachmentID == "" || m.Object == "" {
			return errors.New("an attachment add needs attachment_id (the app's id of the file) and object (its name in bridge_attachments)")
		}
	case wire.AttachmentRemove:
		if m.AttachmentID == "" && m.AttachmentSysID == "" {
			return errors.New("an attachment remove needs attachment_id or attachment_sys_id")
		}
	default:
		return fmt.Errorf("attachment action %q is not add or remove", m.Action)
	}
	return nil
}

// HandleApp handles one app attachment message and returns its final
// result (the consumer publishes it before the ack; replay too).
func (s *Syncer) HandleApp(ctx context.Context, m *events.AttachmentMessage) (events.Result, error) {
	if err := checkAppMessage(m); err != nil {
		return events.Result{}, consume.Permanent(err, "fix the app's attachment message; no retry can change it")
	}
	table, ok := s.entities.Table(m.Entity)
	if !ok {
		return events.Result{}, consume.Permanent(fmt.Errorf("entity %q has no mapping (BRIDGE_TABLES)", m.Entity), "")
	}
	sysID := m.SysID
	if sysID == "" {
		t, id, ok, err := s.links.SysID(ctx, m.Entity, m.ExternalID)
		if err != nil {
			return events.Result{}, err
		}
		if !ok || (t != "" && t != table) {
			return events.Result{}, consume.RetryAfter(fmt.Errorf("%s %s: %w", m.Entity, m.ExternalID, errNotLinked), 0)
		}
		sysID = id
	}
	unlock := s.lockRecord(table, sysID)
	defer unlock()
	rec, rev, err := s.files.load(ctx, table, sysID)
	if err != nil {
		return events.Result{}, err
	}
	rec.Entity, rec.ExternalID = m.Entity, m.ExternalID
	var res events.Result
	if m.Action == wire.AttachmentAdd {
		res, err = s.appAdded(ctx, m, &rec, rev)
	} else {
		res, err = s.appRemoved(ctx, m, &rec, rev)
	}
	if err != nil {
		return events.Result{}, err
	}
	s.m.handled.WithLabelValues(dirToSN, res.Outcome).Inc()
	s.log.Debug("app attachment handled", "entity", m.Entity, "external_id", m.ExternalID, "attachment_id", m.AttachmentID,
		"action", m.Action, "table", table, "sys_id", sysID, "outcome", res.Outcome)
	return res, nil
}

// appAdded uploads the app's file unless ServiceNow has its content on the
// record already.
func (s *Syncer) appAdded(ctx context.Context, m *events.AttachmentMessage, rec *record, rev uint64) (events.Result, error) {
	id := m.AttachmentID
	if rec.removedHas(sideApp, id) {
		return s.result(m, rec, events.OutcomeStale, nil), nil
	}
	if f := rec.byApp(id); f != nil && len(f.SN) > 0 {
		return s.result(m, rec, events.OutcomeUnchanged, f), nil // a redelivery or replay
	}
	info, err := s.obj.GetInfo(ctx, m.Object)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return events.Result{}, consume.Permanent(fmt.Errorf("object %q is not in %s", m.Object, events.BucketAttachments),
			"put the file in the bucket before publishing its add (objects older than the bucket's TTL, the event streams' retention, are gone)")
	}
	if err != nil {
		return events.Result{}, fmt.Errorf("read object %q of %s: %w", m.Object, events.BucketAttachments, err)
	}
	ct := contentTypeOf(m, info)
	size := int64(info.Size)
	if err, hint := s.limits.refusal(size, ct); err != nil {
		return events.Result{}, consume.Permanent(fmt.Errorf("attachment %s (%s) of %s %s: %w", id, fileNameOf(m, info), m.Entity, m.ExternalID, err), hint)
	}
	if m.Digest != "" && m.Digest != info.Digest {
		return events.Result{}, consume.Permanent(fmt.Errorf("object %q has digest %s, the message says %s", m.Object, info.Digest, m.Digest),
			"the object was replaced after the add was published: publish an add for the file in the bucket")
	}
	f := rec.byDigest(info.Digest)
	if f != nil && len(f.SN) > 0 && !f.Removing {
		// ServiceNow has this content on the record: one attachment is enough.
		if !slices.Contains(f.App, id) {
			f.App = append(f.App, id)
		}
		if _, err := s.files.save(ctx, rec, rev); err != nil {
			return events.Result{}, err
		}
		return s.result(m, rec, events.OutcomeUnchanged, f), nil
	}
	if f == nil {
		f = rec.add(file{Digest: info.Digest, Object: m.Object, FileName: fileNameOf(m, info), ContentType: ct, Size: size})
	}
	if !slices.Contains(f.App, id) {
		f.App = append(f.App, id)
	}
	f.Removing = false
	// ServiceNow may hold the content already without the bridge knowing
	// yet: a person attached the same file (its webhook still on the way,
	// or lost), or an earlier attempt uploaded it without recording so.
	got, err := s.findUploaded(ctx, rec, f)
	if err != nil {
		return events.Result{}, err
	}
	outcome := events.OutcomeCreated
	if got.SysID != "" && f.Uploading == "" {
		outcome = events.OutcomeUnchanged // there before the app's add
	}
	if got.SysID == "" {
		f.Uploading = id
		if rev, err = s.files.save(ctx, rec, rev); err != nil {
			return events.Result{}, err
		}
		f = rec.byDigest(info.Digest)
		got, err = s.upload(ctx, rec, f, m.Object, size)
		if err != nil {
			return events.Result{}, err
		}
	}
	f.SN = append(f.SN, got.SysID)
	f.Uploading = ""
	if _, err := s.files.save(ctx, rec, rev); err != nil {
		return events.Result{}, err
	}
	if outcome == events.OutcomeCreated {
		s.m.bytes.WithLabelValues(dirToSN).Add(float64(size))
		s.log.Info("app attachment uploaded to ServiceNow", "entity", m.Entity, "external_id", m.ExternalID, "attachment_id", id,
			"table", rec.Table, "sys_id", rec.SysID, "attachment_sys_id", got.SysID, "size", size)
	}
	return s.result(m, rec, outcome, f), nil
}

// upload streams the object to ServiceNow and checks what it stored.
func (s *Syncer) upload(ctx context.Context, rec *record, f *file, object string, size int64) (Attachment, error) {
	got, err := s.sn.UploadAttachment(ctx, Upload{
		Table: rec.Table, SysID: rec.SysID, FileName: f.FileName, ContentType: f.ContentType, Size: size,
		// Bounded memory, whatever the size (objstream: nats.go's Get
		// buffers as far ahead as the server sends).
		Open: func() (io.ReadCloser, error) {
			r, _, err := objstream.Open(ctx, s.js, events.BucketAttachments, object)
			return r, err
		},
	})
	if errors.Is(err, ErrAttachmentTooLarge) {
		return Attachment{}, consume.Permanent(fmt.Errorf("upload %s to %s/%s: %w", object, rec.Table, rec.SysID, err), HintInstance)
	}
	if err != nil {
		return Attachment{}, fmt.Errorf("upload %s to %s/%s: %w", object, rec.Table, rec.SysID, err)
	}
	d, hashed := wire.DigestFromHex(got.Hash)
	if (got.SizeBytes > 0 && got.SizeBytes != size) || (hashed && d != f.Digest) {
		// ServiceNow holds other bytes than were sent: not kept.
		if derr := s.sn.DeleteAttachment(ctx, got.SysID); derr != nil {
			s.log.Warn("a damaged upload could not be deleted", "attachment_sys_id", got.SysID, "err", derr)
		}
		return Attachment{}, fmt.Errorf("upload %s: ServiceNow stored %d bytes (hash %q), %d bytes %s were sent; uploading again", object, got.SizeBytes, got.Hash, size, f.Digest)
	}
	return got, nil
}

// findUploaded looks for the file's content on the record in ServiceNow:
// an attachment with the file's hash (or, where the instance keeps none,
// from an earlier attempt of this upload: its name and size) that no file
// holds yet.
func (s *Syncer) findUploaded(ctx context.Context, rec *record, f *file) (Attachment, error) {
	list, err := s.sn.ListAttachments(ctx, rec.Table, rec.SysID)
	if err != nil {
		return Attachment{}, fmt.Errorf("list the attachments of %s/%s: %w", rec.Table, rec.SysID, err)
	}
	for _, a := range list {
		if rec.bySN(a.SysID) != nil || rec.removedHas(sideSN, a.SysID) {
			continue
		}
		if d, ok := wire.DigestFromHex(a.Hash); ok {
			if d == f.Digest {
				return a, nil
			}
			continue
		}
		if f.Uploading != "" && a.FileName == f.FileName && a.SizeBytes == f.Size {
			return a, nil
		}
	}
	return Attachment{}, nil
}

// appRemoved takes the app's copy off the file and deletes ServiceNow's
// copies once the app holds none.
func (s *Syncer) appRemoved(ctx context.Context, m *events.AttachmentMessage, rec *record, rev uint64) (events.Result, error) {
	var f *file
	if m.AttachmentID != "" {
		f = rec.byApp(m.AttachmentID)
	}
	if f == nil && m.AttachmentSysID != "" {
		f = rec.bySN(m.AttachmentSysID)
	}
	if f == nil {
		out := events.OutcomeUnchanged // nothing synced to remove
		if rec.removedHas(sideApp, m.AttachmentID) || rec.removedHas(sideSN, m.AttachmentSysID) {
			out = events.OutcomeStale
		}
		if m.AttachmentID != "" && !rec.removedHas(sideApp, m.AttachmentID) {
			rec.tombstone(sideApp, m.AttachmentID) // its add, if it comes late, is stale
			if _, err := s.files.save(ctx, rec, rev); err != nil {
				return events.Result{}, err
			}
		}
		return s.result(m, rec, out, nil), nil
	}
	removed := []string{m.AttachmentID}
	switch {
	case m.AttachmentID != "" && slices.Contains(f.App, m.AttachmentID):
		f.App, _ = without(f.App, m.AttachmentID)
	case slices.Contains(f.App, ""):
		f.App, _ = without(f.App, "") // the copy the bridge handed the app
	default:
		removed, f.App = f.App, nil // named by ServiceNow's id: every copy
	}
	for _, id := range removed {
		rec.tombstone(sideApp, id)
	}
	snap := *f
	if len(f.App) > 0 {
		if _, err := s.files.save(ctx, rec, rev); err != nil {
			return events.Result{}, err
		}
		return s.result(m, rec, events.OutcomeUnchanged, &snap), nil // the app still has a copy
	}
	f.Removing = true
	rev, err := s.files.save(ctx, rec, rev)
	if err != nil {
		return events.Result{}, err
	}
	f = rec.byDigest(snap.Digest)
	for len(f.SN) > 0 {
		id := f.SN[0]
		if err := s.sn.DeleteAttachment(ctx, id); err != nil && !errors.Is(err, ErrNotFound) {
			return events.Result{}, fmt.Errorf("delete attachment %s of %s/%s: %w", id, rec.Table, rec.SysID, err)
		}
		f.SN = f.SN[1:]
		rec.tombstone(sideSN, id)
	}
	rec.drop(snap.Digest)
	if _, err := s.files.save(ctx, rec, rev); err != nil {
		return events.Result{}, err
	}
	s.log.Info("app attachment removed from ServiceNow", "entity", m.Entity, "external_id", m.ExternalID, "attachment_id", m.AttachmentID,
		"table", rec.Table, "sys_id", rec.SysID, "attachment_sys_ids", snap.SN)
	return s.result(m, rec, events.OutcomeUpdated, &snap), nil
}

// contentTypeOf is the message's content type, else the object's, else
// the file name's.
func contentTypeOf(m *events.AttachmentMessage, info *jetstream.ObjectInfo) string {
	if m.ContentType != "" {
		return m.ContentType
	}
	if ct := info.Headers.Get("Content-Type"); ct != "" {
		return ct
	}
	if ct := mime.TypeByExtension(path.Ext(fileNameOf(m, info))); ct != "" {
		return ct
	}
	return "application/octet-stream"
}

// fileNameOf is the message's file name, else the object's description,
// else the last part of its name.
func fileNameOf(m *events.AttachmentMessage, info *jetstream.ObjectInfo) string {
	switch {
	case m.FileName != "":
		return m.FileName
	case info != nil && info.Metadata["file_name"] != "":
		return info.Metadata["file_name"]
	}
	return path.Base(m.Object)
}

// resultKey names an app's attachment message in its result's id.
func resultKey(m *events.AttachmentMessage) string {
	if m.AttachmentID != "" {
		return m.AttachmentID
	}
	return "sn-" + m.AttachmentSysID
}

// result is the app's answer about m; f is the file it is about, when known.
func (s *Syncer) result(m *events.AttachmentMessage, rec *record, outcome string, f *file) events.Result {
	r := events.Result{
		ExternalID: m.ExternalID, Entity: m.Entity, Action: events.ActionAttachment, Outcome: outcome,
		Table: rec.Table, SysID: rec.SysID, URL: events.RecordURL(s.cfg.InstanceURL, rec.Table, rec.SysID), At: time.Now().UTC(),
		Attachment: &events.ResultAttachment{Action: m.Action, AttachmentID: m.AttachmentID, AttachmentSysID: m.AttachmentSysID, Object: m.Object, FileName: m.FileName},
	}
	if f != nil {
		a := r.Attachment
		if len(f.SN) > 0 && (a.AttachmentSysID == "" || m.Action == wire.AttachmentAdd) {
			a.AttachmentSysID = f.SN[len(f.SN)-1]
		}
		a.Digest, a.Size = f.Digest, f.Size
		if a.Object == "" {
			a.Object = f.Object
		}
		if a.FileName == "" {
			a.FileName = f.FileName
		}
	}
	return r
}

// failure is the result of a message that failed: rejected (dead-lettered)
// or retrying.
func (s *Syncer) failure(ctx context.Context, m *events.AttachmentMessage, outcome string, d consume.Decision, cause error) events.Result {
	rec := record{}
	if table, ok := s.entities.Table(m.Entity); ok {
		rec.Table = table
		rec.SysID = m.SysID
		if rec.SysID == "" {
			if t, id, ok, err := s.links.SysID(ctx, m.Entity, m.ExternalID); err == nil && ok && (t == "" || t == table) {
				rec.SysID = id
			}
		}
		if rec.SysID == "" {
			rec.Table = ""
		}
	}
	r := s.result(m, &rec, outcome, nil)
	e := &events.ResultError{Status: d.Status, Hint: d.Hint, Message: "the bridge's attachment pipeline stopped"}
	if cause != nil {
		e.Message = cause.Error()
	}
	if outcome == events.OutcomeRejected {
		e.DeadLettered = true
	} else {
		e.Reason = d.Reason
	}
	r.Error = e
	return r
}

// resultSink stores results in BRIDGE_RESULTS.
type resultSink struct {
	js jetstream.JetStream
	m  *metrics
}

func (rs resultSink) publish(ctx context.Context, r events.Result, id string) error {
	body, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	msg := &nats.Msg{Subject: events.ResultSubject(r.Entity, r.Outcome), Data: body, Header: nats.Header{}}
	msg.Header.Set(events.HeaderMsgID, id)
	ack, err := rs.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(events.StreamResults))
	if err != nil {
		return fmt.Errorf("publish result %s to %s: %w", id, events.StreamResults, err)
	}
	if !ack.Duplicate {
		rs.m.results.WithLabelValues(r.Outcome).Inc()
	}
	return nil
}

// resultID is the Nats-Msg-Id of r, the result of m, delivered as msg.
func resultID(m *events.AttachmentMessage, r events.Result, h nats.Header) string {
	return wire.ResultAttachmentMsgID(m.Entity, m.ExternalID, resultKey(m), m.Action, r.Outcome) + dlq.RetryTag(h)
}

// appHandler is the app -> ServiceNow direction's part in the consume
// engine; as a consume.Observer it tells the app of retries and
// rejections.
type appHandler struct{ s *Syncer }

var _ consume.Observer = appHandler{}

// Key is the app's record.
func (h appHandler) Key(msg jetstream.Msg) string {
	var probe struct {
		ExternalID string `json:"external_id"`
	}
	parts := strings.Split(msg.Subject(), ".")
	if len(parts) != 3 || json.Unmarshal(msg.Data(), &probe) != nil || probe.ExternalID == "" {
		return ""
	}
	return parts[1] + "/" + probe.ExternalID
}

// Handle uploads or removes one file and stores its result before the ack.
func (h appHandler) Handle(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
	m, err := decodeAppMessage(msg.Subject(), msg.Data())
	if err != nil {
		return consume.Permanent(err, "fix the app's attachment message; no retry can change it")
	}
	r, err := h.s.HandleApp(ctx, m)
	if err != nil {
		return err
	}
	if err := h.s.results.publish(ctx, r, resultID(m, r, msg.Headers())); err != nil {
		return fmt.Errorf("attachment %s of %s %s is handled; its result is not stored yet: %w", resultKey(m), m.Entity, m.ExternalID, err)
	}
	return nil
}

// Retrying implements consume.Observer: a message waiting on ServiceNow
// (429, 5xx, an open breaker, the network, a token) tells the app once.
func (h appHandler) Retrying(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata, d consume.Decision, err error) {
	switch d.Reason {
	case consume.ReasonRateLimited, consume.ReasonServerError, consume.ReasonNetwork, consume.ReasonAuth, consume.ReasonBreakerOpen:
	case consume.ReasonPaused:
		d.Reason = consume.ReasonBreakerOpen
	default:
		return
	}
	m, derr := decodeAppMessage(msg.Subject(), msg.Data())
	if derr != nil || m.ExternalID == "" {
		return
	}
	r := h.s.failure(ctx, m, events.OutcomeRetrying, d, err)
	if perr := h.s.results.publish(ctx, r, resultID(m, r, msg.Headers())); perr != nil {
		h.s.log.Warn("retrying result not stored; the final result follows", "external_id", m.ExternalID, "attachment_id", m.AttachmentID, "err", perr)
	}
}

// DeadLettered implements consume.Observer: the app hears why its file was
// refused (the limits, ServiceNow's answer, a record never linked). An
// error keeps the message until its result is stored.
func (h appHandler) DeadLettered(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata, d consume.Decision, cause error) error {
	m, err := decodeAppMessage(msg.Subject(), msg.Data())
	if err != nil || m.ExternalID == "" {
		return nil // names no record: no one to tell
	}
	if errors.Is(cause, errNotLinked) && d.Hint == "" {
		d.Hint = HintNotLinked
	}
	r := h.s.failure(ctx, m, events.OutcomeRejected, d, cause)
	return h.s.results.publish(ctx, r, resultID(m, r, msg.Headers()))
}
