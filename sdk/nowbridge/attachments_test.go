package nowbridge_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nowbridge/nowbridge/sdk/nowbridge"
	"github.com/nowbridge/nowbridge/sdk/wire"
)

// PutAttachment stores the file, then announces it; ConsumeAttachments
// hands over the bridge's attachment messages, whose bytes OpenAttachment
// reads; Consume, beside it, sees record versions only.
func TestAttachments_PutConsumeOpenAndConsumeSkipsThem(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	file := bytes.Repeat([]byte("0123456789abcdef"), 40_000) // 640 KB: five chunks
	pub, err := e.client.PutAttachment(ctx, "ticket", nowbridge.NewAttachment{ExternalID: "TCK-1", AttachmentID: "F-1", FileName: "trace.log", ContentType: "text/plain"}, bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	if pub.Subject != "app.ticket.attachment" || pub.MsgID != "ticket:TCK-1:attachment:F-1:add" {
		t.Errorf("published %+v, want app.ticket.attachment under ticket:TCK-1:attachment:F-1:add", pub)
	}
	st, err := e.js.Stream(ctx, wire.StreamApp)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := st.GetMsg(ctx, pub.Seq)
	if err != nil {
		t.Fatal(err)
	}
	var add nowbridge.AttachmentMessage
	if err := json.Unmarshal(raw.Data, &add); err != nil {
		t.Fatal(err)
	}
	if add.Action != nowbridge.AttachmentAdd || add.Object != "app/ticket/TCK-1/F-1" || add.Size != int64(len(file)) || add.FileName != "trace.log" || add.Digest == "" {
		t.Errorf("add %+v, want the object, size, name and digest", add)
	}
	if _, err := e.client.PutAttachment(ctx, "ticket", nowbridge.NewAttachment{AttachmentID: "F-2", FileName: "x"}, bytes.NewReader(nil)); !errors.Is(err, nowbridge.ErrInvalidChange) {
		t.Errorf("an attachment without its record: %v, want ErrInvalidChange", err)
	}

	// The bridge hands the app a record version and a file (the app's own
	// object stands in for one the bridge stored).
	rec, _ := json.Marshal(nowbridge.ApplyMessage{Entity: "ticket", Action: "update", AppChange: nowbridge.AppChange{ExternalID: "TCK-1", SysID: "9d385017c611228701d22104cc95c371", Table: "incident", Version: 3}})
	att := add
	att.AttachmentSysID, att.SysID, att.Table = "0123456789abcdef0123456789abcdef", "9d385017c611228701d22104cc95c371", "incident"
	attBody, _ := att.Body()
	for _, m := range []*nats.Msg{
		{Subject: "bridge.apply.ticket.update", Data: rec, Header: nats.Header{wire.HeaderMsgID: []string{"incident:9d38:3:update"}}},
		{Subject: "bridge.apply.ticket.attachment", Data: attBody, Header: nats.Header{wire.HeaderMsgID: []string{wire.ApplyAttachmentMsgID(att.AttachmentSysID, "add")}}},
	} {
		if _, err := e.js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	var records recorder
	stopRecords := e.run(func(ctx context.Context) error { return e.client.Consume(ctx, records.handler, fastOpts("app")) })
	defer stopRecords()
	var mu sync.Mutex
	var files [][]byte
	var ids []string
	stopFiles := e.run(func(ctx context.Context) error {
		return e.client.ConsumeAttachments(ctx, func(ctx context.Context, m *nowbridge.AttachmentMessage) error {
			r, err := e.client.OpenAttachment(ctx, m)
			if err != nil {
				return err
			}
			defer r.Close()
			b, err := io.ReadAll(r)
			if err != nil {
				return err
			}
			mu.Lock()
			files, ids = append(files, b), append(ids, m.MsgID)
			mu.Unlock()
			return nil
		}, fastOpts("app-attachments"))
	})
	defer stopFiles()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(files)
		mu.Unlock()
		if n > 0 && records.len() > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %d files, %d record versions handled", n, records.len())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // anything more would show now
	mu.Lock()
	defer mu.Unlock()
	if len(files) != 1 || !bytes.Equal(files[0], file) || ids[0] != "sys_attachment:0123456789abcdef0123456789abcdef:add" {
		t.Errorf("ConsumeAttachments read %d files (ids %v), want the one file whole", len(files), ids)
	}
	if got := records.all(); len(got) != 1 || got[0].Action != "update" {
		t.Errorf("Consume handled %+v, want the record version only", got)
	}
}

// OpenAttachment of an object no longer in the bucket says so.
func TestAttachments_OpenAGoneObject(t *testing.T) {
	e := newEnv(t)
	_, err := e.client.OpenAttachment(t.Context(), &nowbridge.AttachmentMessage{Object: "sn/incident/x/y", MsgID: "m"})
	if !errors.Is(err, nowbridge.ErrAttachmentGone) {
		t.Errorf("open a missing object: %v, want ErrAttachmentGone", err)
	}
}
