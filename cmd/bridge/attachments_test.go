package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/status"
	"github.com/nowbridge/nowbridge/sdk/nowbridge"
)

// bridge dev wires the attachment pipelines as serve does: a file attached
// in the simulator reaches the app, the app's file reaches the incident,
// and `bridge status` counts both.
func TestDev_AttachmentsBothWaysAndInStatus(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	st, wait, err := startDev(ctx, &lockedBuffer{}, devOptions{listen: "127.0.0.1:0", simListen: "127.0.0.1:0", natsListen: "127.0.0.1:0",
		dataDir: t.TempDir(), tables: []string{"incident"}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		if err := wait(); err != nil {
			t.Errorf("dev stack: %v", err)
		}
	}()
	msgs := make(chan *nats.Msg, 64)
	sub, err := st.nc.ChanSubscribe("bridge.>", msgs)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := st.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	next := func(what string, match func(*nats.Msg) bool) *nats.Msg {
		t.Helper()
		deadline := time.After(15 * time.Second)
		for {
			select {
			case m := <-msgs:
				if match(m) {
					return m
				}
			case <-deadline:
				t.Fatalf("no %s within 15s", what)
			}
		}
	}
	body, _ := json.Marshal(events.AppChange{ExternalID: "TCK-ATT", Version: 1, UpdatedAt: time.Now().UTC(), Fields: events.Fields{"title": "Printer shows an error", "status": "new"}})
	if err := st.nc.Publish("app.ticket.upsert", body); err != nil {
		t.Fatal(err)
	}
	var created events.Result
	_ = json.Unmarshal(next("the ticket's created result", func(m *nats.Msg) bool { return m.Subject == "bridge.result.ticket.created" }).Data, &created)

	shot := bytes.Repeat([]byte("photo of the error "), 5000)
	st.sim.AddAttachment("incident", created.SysID, "error.jpg", "image/jpeg", shot)
	var add events.AttachmentMessage
	_ = json.Unmarshal(next("the attachment for the app", func(m *nats.Msg) bool { return m.Subject == "bridge.apply.ticket.attachment" }).Data, &add)
	if add.ExternalID != "TCK-ATT" || add.Action != events.AttachmentAdd || add.Size != int64(len(shot)) || add.FileName != "error.jpg" {
		t.Errorf("the app was handed %+v, want the ticket's error.jpg", add)
	}

	app, err := nowbridge.New(st.js, nowbridge.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := app.PutAttachment(ctx, "ticket", nowbridge.NewAttachment{ExternalID: "TCK-ATT", AttachmentID: "F-1", FileName: "driver.log", ContentType: "text/plain"},
		strings.NewReader(strings.Repeat("printer driver log line\n", 2000))); err != nil {
		t.Fatal(err)
	}
	var up events.Result
	_ = json.Unmarshal(next("the upload's result", func(m *nats.Msg) bool {
		return m.Subject == "bridge.result.ticket.created" && bytes.Contains(m.Data, []byte(`"attachment_id":"F-1"`))
	}).Data, &up)
	if up.SysID != created.SysID || up.Attachment == nil || up.Attachment.AttachmentSysID == "" {
		t.Fatalf("upload result %+v, want the incident and ServiceNow's attachment", up)
	}
	if n := len(st.sim.Attachments("incident", created.SysID)); n != 2 {
		t.Fatalf("the incident has %d attachments, want the person's and the app's", n)
	}

	env := map[string]string{"BRIDGE_NATS_URL": st.ns.ClientURL()}
	var rep status.Report
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, out, stderr := runTool(t, env, "", "status", "--json")
		if code != 0 || json.Unmarshal([]byte(out), &rep) != nil || rep.Attachments == nil {
			t.Fatalf("status --json: %d %s %s", code, out, stderr)
		}
		a := rep.Attachments
		// The upload's webhook comes back: once it is handled, ServiceNow's
		// copies are both known.
		if a.Objects == 2 && a.Synced.Records == 1 && a.Synced.Files == 2 && a.Synced.SN == 2 && a.Synced.App == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status attachments %+v, want 2 objects, 1 record, 2 files, 2 copies each side", a)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if rep.Attachments.Bytes != uint64(len(shot)+len("printer driver log line\n")*2000) {
		t.Errorf("status counts %d bytes of files, want both files' sizes", rep.Attachments.Bytes)
	}
	code, out, _ := runTool(t, env, "", "status")
	if code != 0 || !strings.Contains(out, "ATTACHMENTS") || !strings.Contains(out, "bridge_attachments") || !strings.Contains(out, "copies: 2 in ServiceNow, 2 in the app") {
		t.Errorf("status: %d\n%s\nwant the attachments' lines", code, out)
	}

	// bridge replay routes both streams' attachment messages through the
	// attachment path: nothing is handed over or uploaded again.
	for k, v := range map[string]string{"BRIDGE_SN_INSTANCE_URL": st.simURL, "BRIDGE_SN_CLIENT_ID": st.clientID, "BRIDGE_SN_CLIENT_SECRET": st.clientSc,
		"BRIDGE_WEBHOOK_SECRETS": st.secret.Encoded(), "BRIDGE_TABLES": "incident"} {
		env[k] = v
	}
	for len(msgs) > 0 {
		<-msgs
	}
	for _, stream := range []string{"sn", "app"} {
		code, out, stderr := runTool(t, env, "", "replay", "--stream", stream, "--json")
		var sum struct {
			Items []struct{ Subject, Outcome, Error string }
		}
		if code != 0 || json.Unmarshal([]byte(out), &sum) != nil {
			t.Fatalf("replay --stream %s: %d %s %s", stream, code, out, stderr)
		}
		seen := 0
		for _, it := range sum.Items {
			if strings.Contains(it.Subject, "attachment") {
				seen++
				if it.Error != "" {
					t.Errorf("replay --stream %s: %s failed: %s", stream, it.Subject, it.Error)
				}
			}
		}
		if seen == 0 {
			t.Errorf("replay --stream %s replayed no attachment message: %s", stream, out)
		}
	}
	time.Sleep(300 * time.Millisecond)
	for len(msgs) > 0 {
		if m := <-msgs; m.Subject == "bridge.apply.ticket.attachment" || (strings.HasPrefix(m.Subject, "bridge.result.") && bytes.Contains(m.Data, []byte(`"outcome":"created"`))) {
			t.Errorf("the replay handed over or uploaded again: %s %s", m.Subject, m.Data)
		}
	}
	if n := len(st.sim.Attachments("incident", created.SysID)); n != 2 {
		t.Errorf("after the replay the incident has %d attachments, want still 2", n)
	}
}
