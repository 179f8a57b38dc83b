package attach

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
)

// CheckAttachments is reconcile's look at one record it re-reads: it lists
// the record's attachments in ServiceNow and publishes to SN_EVENTS the
// events its webhooks missed — an insert for a file the bridge never
// synced, a delete for a synced file ServiceNow no longer has — under the
// webhook's own message ids, so one stored already is not stored twice. The
// attachment pipeline then decides as for a webhook. found counts the
// events SN_EVENTS did not hold (reconcile.AttachmentChecker).
func (s *Syncer) CheckAttachments(ctx context.Context, table, sysID string) (found int, err error) {
	if _, ok := s.entities.Entity(table); !ok || s.limits.MaxBytes == 0 {
		return 0, nil
	}
	list, err := s.sn.ListAttachments(ctx, table, sysID)
	if err != nil {
		return 0, fmt.Errorf("list the attachments of %s/%s: %w", table, sysID, err)
	}
	rec, _, err := s.files.load(ctx, table, sysID)
	if err != nil {
		return 0, err
	}
	var evs []*events.SNEvent
	present := map[string]bool{}
	for _, a := range list {
		present[a.SysID] = true
		if rec.bySN(a.SysID) != nil || rec.removedHas(sideSN, a.SysID) {
			continue
		}
		evs = append(evs, attachmentEvent(events.ActionInsert, a.SysID, a.CreatedOn, events.Fields{
			"table_name": table, "table_sys_id": sysID, "file_name": a.FileName, "content_type": a.ContentType,
			"size_bytes": strconv.FormatInt(a.SizeBytes, 10), "hash": a.Hash,
		}))
	}
	for _, f := range rec.Files {
		for _, id := range f.SN {
			if present[id] {
				continue
			}
			evs = append(evs, attachmentEvent(events.ActionDelete, id, "", events.Fields{
				"table_name": table, "table_sys_id": sysID, "file_name": f.FileName, "content_type": f.ContentType,
				"size_bytes": strconv.FormatInt(f.Size, 10),
			}))
		}
	}
	for _, ev := range evs {
		n, err := s.publishEvent(ctx, ev)
		if err != nil {
			return found, err
		}
		found += n
	}
	return found, nil
}

// attachmentEvent is a sys_attachment event as the business rule sends it
// (sys_mod_count 0: ServiceNow writes an attachment's record once).
func attachmentEvent(action, id, on string, rec events.Fields) *events.SNEvent {
	if _, err := time.Parse(events.SNTimeLayout, on); err != nil {
		on = time.Now().UTC().Format(events.SNTimeLayout)
	}
	if rec["hash"] == "" {
		delete(rec, "hash")
	}
	return &events.SNEvent{
		Table: events.TableAttachment, SysID: id, Action: action, SysUpdatedOn: on,
		Record: rec, Source: events.SourceReconcile,
	}
}

// publishEvent stores ev in SN_EVENTS; it returns 1 when the stream did
// not hold it yet.
func (s *Syncer) publishEvent(ctx context.Context, ev *events.SNEvent) (int, error) {
	body, err := json.Marshal(ev)
	if err != nil {
		return 0, err
	}
	msg := &nats.Msg{Subject: ev.Subject(), Data: body, Header: nats.Header{}}
	msg.Header.Set(events.HeaderMsgID, ev.MsgID())
	msg.Header.Set(events.HeaderSource, events.SourceReconcile)
	ack, err := s.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(events.StreamSN))
	if err != nil {
		return 0, fmt.Errorf("publish %s to %s: %w", ev.MsgID(), events.StreamSN, err)
	}
	if ack.Duplicate {
		return 0, nil
	}
	return 1, nil
}
