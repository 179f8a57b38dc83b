package attach

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/sdk/wire"
)

// ServiceNow -> the app: a sys_attachment webhook (or reconcile's finding)
// in SN_EVENTS becomes a file in bridge_attachments and an add or remove on
// bridge.apply.<entity>.attachment.

// snFile is what a sys_attachment event says of its attachment.
type snFile struct {
	ID          string // the attachment's sys_id
	Table       string // the record's table
	SysID       string // the record's sys_id
	FileName    string
	ContentType string
	Size        int64 // -1: not said
	Hash        string
}

// snFileOf reads a sys_attachment event.
func snFileOf(ev *events.SNEvent) (snFile, error) {
	if ev.Table != events.TableAttachment {
		return snFile{}, fmt.Errorf("event of table %q is not a %s event", ev.Table, events.TableAttachment)
	}
	a := snFile{
		ID: ev.SysID, Table: ev.Record["table_name"], SysID: ev.Record["table_sys_id"],
		FileName: ev.Record["file_name"], ContentType: ev.Record["content_type"], Hash: ev.Record["hash"], Size: -1,
	}
	if n, err := strconv.ParseInt(strings.TrimSpace(ev.Record["size_bytes"]), 10, 64); err == nil && n >= 0 {
		a.Size = n
	}
	switch {
	case !events.ValidSysID(a.ID):
		return a, fmt.Errorf("attachment sys_id %q is not 32 lowercase hex characters", a.ID)
	case !events.ValidTable(a.Table) || !events.ValidSysID(a.SysID):
		return a, fmt.Errorf("attachment %s names no valid record (table_name %q, table_sys_id %q): the business rule sends both", a.ID, a.Table, a.SysID)
	}
	return a, nil
}

// HandleSN handles one sys_attachment event: what the live consumer runs
// per message, and what replay calls.
func (s *Syncer) HandleSN(ctx context.Context, ev *events.SNEvent) (Outcome, error) {
	a, err := snFileOf(ev)
	if err != nil {
		return "", consume.Permanent(err, "")
	}
	entity, ok := s.entities.Entity(a.Table)
	if !ok {
		return OutcomeNotSynced, nil
	}
	if s.limits.MaxBytes == 0 {
		return OutcomeIgnored, nil // attachments are off (BRIDGE_ATTACHMENT_MAX_BYTES=0)
	}
	unlock := s.lockRecord(a.Table, a.SysID)
	defer unlock()
	rec, rev, err := s.files.load(ctx, a.Table, a.SysID)
	if err != nil {
		return "", err
	}
	rec.Entity = entity
	var out Outcome
	switch ev.Action {
	case events.ActionInsert:
		out, err = s.snAdded(ctx, a, &rec, rev)
	case events.ActionDelete:
		out, err = s.snRemoved(ctx, a, &rec, rev)
	default:
		out = OutcomeIgnored
	}
	if err == nil {
		s.m.handled.WithLabelValues(dirToApp, string(out)).Inc()
		s.log.Debug("ServiceNow attachment handled", "table", a.Table, "sys_id", a.SysID, "attachment_sys_id", a.ID, "action", ev.Action, "outcome", string(out))
	}
	return out, err
}

// snAdded hands a new ServiceNow file to the app, unless the app has its
// content already (the bridge's own upload, or the same file twice).
func (s *Syncer) snAdded(ctx context.Context, a snFile, rec *record, rev uint64) (Outcome, error) {
	if rec.removedHas(sideSN, a.ID) {
		return OutcomeStale, nil
	}
	if f := rec.bySN(a.ID); f != nil {
		if f.Announced == a.ID {
			return OutcomeDuplicate, nil // handled before: a redelivery or replay
		}
		return OutcomeEcho, nil // the bridge uploaded it from the app
	}
	if err, hint := s.limits.refusal(max(a.Size, 0), a.ContentType); err != nil {
		return "", consume.Permanent(fmt.Errorf("ServiceNow attachment %s (%s) of %s/%s: %w", a.ID, a.FileName, a.Table, a.SysID, err), hint)
	}
	if d, ok := wire.DigestFromHex(a.Hash); ok {
		if f := rec.byDigest(d); f != nil && f.appHas() {
			return s.snCopy(ctx, rec, rev, f, a.ID)
		}
	}
	st, err := s.download(ctx, a)
	if errors.Is(err, ErrNotFound) {
		return OutcomeGone, nil // deleted before it could be read: its delete follows
	}
	if err != nil {
		return "", err
	}
	if f := rec.byDigest(st.digest); f != nil && f.appHas() {
		if f.Object != st.name {
			s.deleteObject(ctx, st.name) // the app has this content: one object is enough
		}
		return s.snCopy(ctx, rec, rev, f, a.ID)
	}
	rec.drop(st.digest) // a file the app no longer holds, if any, starts over
	f := rec.add(file{
		Digest: st.digest, Object: st.name, FileName: a.FileName, ContentType: st.contentType, Size: st.size,
		SN: []string{a.ID}, App: []string{""}, Announced: a.ID,
	})
	if err := s.publishApply(ctx, rec, f, wire.AttachmentAdd, a.ID); err != nil {
		return "", err
	}
	// After the publish: a crash in between redoes the download and
	// publishes again under the same message id, which BRIDGE_APPLY drops.
	if _, err := s.files.save(ctx, rec, rev); err != nil {
		return "", err
	}
	s.m.bytes.WithLabelValues(dirToApp).Add(float64(st.size))
	s.log.Info("ServiceNow attachment handed to the app", "table", a.Table, "sys_id", a.SysID, "attachment_sys_id", a.ID,
		"file_name", a.FileName, "size", st.size, "object", st.name)
	return OutcomeAdded, nil
}

// snCopy records another ServiceNow copy of a content the app has: the
// webhook of the bridge's own upload (Uploading: its upload was not
// recorded, the process having stopped), or a second attachment of the same
// file, which the app does not get twice.
func (s *Syncer) snCopy(ctx context.Context, rec *record, rev uint64, f *file, id string) (Outcome, error) {
	out := OutcomeDuplicate
	if f.Uploading != "" && len(f.SN) == 0 {
		f.Uploading, out = "", OutcomeEcho
	}
	f.SN = append(f.SN, id)
	if _, err := s.files.save(ctx, rec, rev); err != nil {
		return "", err
	}
	return out, nil
}

// snRemoved hands the removal of a ServiceNow file to the app once its last
// copy on the record is gone.
func (s *Syncer) snRemoved(ctx context.Context, a snFile, rec *record, rev uint64) (Outcome, error) {
	f := rec.bySN(a.ID)
	if f == nil {
		if rec.removedHas(sideSN, a.ID) {
			return OutcomeStale, nil // the bridge's own delete, or handled before
		}
		return OutcomeUnknown, nil
	}
	f.SN, _ = without(f.SN, a.ID)
	rec.tombstone(sideSN, a.ID)
	out := OutcomeDuplicate // another copy stays
	switch {
	case f.Removing:
		out = OutcomeEcho // the bridge is deleting the copies of a file the app removed
		if len(f.SN) == 0 {
			rec.drop(f.Digest)
		}
	case len(f.SN) == 0:
		if err := s.publishApply(ctx, rec, f, wire.AttachmentRemove, a.ID); err != nil {
			return "", err
		}
		for _, id := range f.App {
			rec.tombstone(sideApp, id)
		}
		rec.drop(f.Digest)
		out = OutcomeRemoved
	}
	if _, err := s.files.save(ctx, rec, rev); err != nil {
		return "", err
	}
	return out, nil
}

// publishApply hands the app an add or remove of f; id is the ServiceNow
// attachment whose event caused it (the message id's).
func (s *Syncer) publishApply(ctx context.Context, rec *record, f *file, action, id string) error {
	_, ext, _, err := s.links.ExternalID(ctx, rec.Table, rec.SysID)
	if err != nil {
		return err
	}
	m := events.AttachmentMessage{
		Action: action, Entity: rec.Entity, ExternalID: ext, Table: rec.Table, SysID: rec.SysID,
		AttachmentSysID: f.Announced, Object: f.Object, FileName: f.FileName, ContentType: f.ContentType,
		Size: f.Size, Digest: f.Digest, MsgID: wire.ApplyAttachmentMsgID(id, action),
	}
	if action == wire.AttachmentRemove {
		for _, a := range f.App {
			if a != "" {
				m.AttachmentIDs = append(m.AttachmentIDs, a)
			}
		}
		if m.AttachmentSysID == "" {
			m.AttachmentSysID = id
		}
	}
	body, err := m.Body()
	if err != nil {
		return consume.Permanent(fmt.Errorf("encode %s: %w", m.MsgID, err), "")
	}
	msg := &nats.Msg{Subject: wire.ApplyAttachmentSubject(rec.Entity), Data: body, Header: nats.Header{}}
	msg.Header.Set(events.HeaderMsgID, m.MsgID)
	if _, err := s.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(events.StreamApply)); err != nil {
		return fmt.Errorf("publish %s to %s: %w", m.MsgID, events.StreamApply, err)
	}
	return nil
}

// stored is a file put in bridge_attachments.
type stored struct {
	name, digest, contentType string
	size                      int64
}

// snObjectName is where a ServiceNow attachment's bytes go.
func snObjectName(a snFile) string { return "sn/" + a.Table + "/" + a.SysID + "/" + a.ID }

// download streams a ServiceNow attachment into bridge_attachments and
// verifies it. The object becomes visible only once every byte was read
// and checked: a download cut short, of the wrong size or hash fails the
// object store's Put before its metadata is written, which purges the
// chunks sent (an interrupted Put leaves no object), and the message is
// retried from the start. An attachment that is gone is ErrNotFound.
func (s *Syncer) download(ctx context.Context, a snFile) (stored, error) {
	body, meta, err := s.sn.DownloadAttachment(ctx, a.ID)
	if err != nil {
		return stored{}, fmt.Errorf("download attachment %s of %s/%s: %w", a.ID, a.Table, a.SysID, err)
	}
	defer body.Close()
	size, ct, hash := a.Size, a.ContentType, a.Hash
	if meta.SizeBytes > 0 {
		size = meta.SizeBytes
	}
	if meta.ContentType != "" {
		ct = meta.ContentType
	}
	if meta.Hash != "" {
		hash = meta.Hash
	}
	if err, hint := s.limits.refusal(max(size, 0), ct); err != nil {
		return stored{}, consume.Permanent(fmt.Errorf("ServiceNow attachment %s (%s) of %s/%s: %w", a.ID, a.FileName, a.Table, a.SysID, err), hint)
	}
	want, _ := wire.DigestFromHex(hash)
	vr := &verifyingReader{r: body, h: sha256.New(), max: s.limits.MaxBytes, size: size, digest: want}
	name := snObjectName(a)
	info, err := s.obj.Put(ctx, jetstream.ObjectMeta{
		Name: name, Description: a.FileName,
		Headers:  nats.Header{"Content-Type": []string{ct}},
		Metadata: map[string]string{"file_name": a.FileName, "table": a.Table, "sys_id": a.SysID, "attachment_sys_id": a.ID},
	}, vr)
	if vr.refused != nil {
		return stored{}, consume.Permanent(vr.refused, HintTooLarge)
	}
	if err != nil {
		return stored{}, fmt.Errorf("store attachment %s of %s/%s in %s (nothing stored; the download starts over): %w", a.ID, a.Table, a.SysID, events.BucketAttachments, err)
	}
	got := wire.Digest(vr.h.Sum(nil))
	if info.Digest != got || int64(info.Size) != vr.n {
		// The object store hashed other bytes than were read: not kept.
		s.deleteObject(ctx, name)
		return stored{}, fmt.Errorf("attachment %s: the object store holds %d bytes %s, the download read %d bytes %s; starting over", a.ID, info.Size, info.Digest, vr.n, got)
	}
	return stored{name: name, digest: got, contentType: ct, size: vr.n}, nil
}

// verifyingReader passes a download through, counting and hashing it, and
// turns its end into an error when it is over the limit, shorter or longer
// than ServiceNow said, or of another SHA-256: the object store's Put then
// fails and keeps nothing.
type verifyingReader struct {
	r       io.Reader
	h       hash.Hash
	max     int64  // the limit
	size    int64  // the size ServiceNow said, -1 unknown
	digest  string // the digest ServiceNow's hash says, "" unknown
	n       int64
	refused error // over the limit: permanent
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	v.n += int64(n)
	v.h.Write(p[:n])
	switch {
	case v.n > v.max:
		v.refused = fmt.Errorf("%w: more than BRIDGE_ATTACHMENT_MAX_BYTES (%d) bytes", ErrRefused, v.max)
		return n, v.refused
	case v.size >= 0 && v.n > v.size:
		return n, fmt.Errorf("download longer than the %d bytes ServiceNow announced", v.size)
	case err == io.EOF && v.size >= 0 && v.n != v.size:
		return n, fmt.Errorf("download interrupted after %d of %d bytes: %w", v.n, v.size, io.ErrUnexpectedEOF)
	case err == io.EOF && v.digest != "" && wire.Digest(v.h.Sum(nil)) != v.digest:
		return n, fmt.Errorf("downloaded bytes have SHA-256 %s, ServiceNow's hash says %s", wire.Digest(v.h.Sum(nil)), v.digest)
	}
	return n, err
}

// deleteObject removes an object the bridge will not use (best effort: the
// bucket's TTL removes it anyway).
func (s *Syncer) deleteObject(ctx context.Context, name string) {
	if err := s.obj.Delete(ctx, name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		s.log.Warn("unused attachment object not deleted; the bucket's TTL removes it", "object", name, "err", err)
	}
}

// snHandler is the ServiceNow -> app direction's part in the consume
// engine.
type snHandler struct{ s *Syncer }

// Key is the attachment's record, so one record's files are decided one at
// a time and in order.
func (h snHandler) Key(msg jetstream.Msg) string {
	var probe struct {
		Record struct {
			Table string `json:"table_name"`
			SysID string `json:"table_sys_id"`
		} `json:"record"`
	}
	if json.Unmarshal(msg.Data(), &probe) != nil || probe.Record.SysID == "" {
		return ""
	}
	return probe.Record.Table + ":" + probe.Record.SysID
}

// Handle decodes the event and handles it.
func (h snHandler) Handle(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
	var ev events.SNEvent
	if err := json.Unmarshal(msg.Data(), &ev); err != nil {
		return consume.Permanent(fmt.Errorf("decode ServiceNow event %s (seq %d): %w", msg.Subject(), meta.Sequence.Stream, err), "")
	}
	out, err := h.s.HandleSN(ctx, &ev)
	if err == nil && h.s.log.Enabled(ctx, slog.LevelDebug) {
		h.s.log.Debug("attachment event handled", "subject", msg.Subject(), "seq", meta.Sequence.Stream, "outcome", string(out))
	}
	return err
}
