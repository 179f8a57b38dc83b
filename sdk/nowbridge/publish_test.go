package nowbridge_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/sdk/nowbridge"
)

// storedApp returns the messages stored in APP_EVENTS.
func (e *env) storedApp() []*jetstream.RawStreamMsg {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, events.StreamApp)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// A published change is stored once in APP_EVENTS on app.<entity>.upsert
// with the contract's message id; publishing it again (a retry) is a
// duplicate, not a second change.
func TestPublish_StoredOnceUnderTheContractsMessageID(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	ch := nowbridge.AppChange{ExternalID: "TCK-1042", Version: 7, Fields: nowbridge.Fields{"title": "Email down", "priority": "2"}}
	p, err := e.client.Publish(ctx, "ticket", ch)
	if err != nil {
		t.Fatal(err)
	}
	if p.Subject != "app.ticket.upsert" || p.MsgID != "ticket:TCK-1042:7:upsert" || p.Version != 7 || p.Seq != 1 || p.Duplicate {
		t.Fatalf("Publish = %+v; want app.ticket.upsert, ticket:TCK-1042:7:upsert, version 7, seq 1, not a duplicate", p)
	}
	again, err := e.client.Publish(ctx, "ticket", ch)
	if err != nil || !again.Duplicate || again.Seq != 1 {
		t.Fatalf("publishing the same version again = %+v, %v; want the duplicate of seq 1", again, err)
	}

	stored := e.storedApp()
	if len(stored) != 1 {
		t.Fatalf("APP_EVENTS holds %d messages, want 1", len(stored))
	}
	m := stored[0]
	if got := m.Header.Get(events.HeaderMsgID); got != events.AppMsgID("ticket", "TCK-1042", 7, events.AppUpsert) {
		t.Errorf("Nats-Msg-Id = %q", got)
	}
	var got events.AppChange
	if err := json.Unmarshal(m.Data, &got); err != nil {
		t.Fatal(err)
	}
	if got.ExternalID != "TCK-1042" || got.Version != 7 || got.Fields["title"] != "Email down" || got.UpdatedAt.IsZero() {
		t.Errorf("stored change = %+v; want TCK-1042 version 7 with the fields and updated_at set", got)
	}
}

// Versions Publish assigns grow per record, within the process and from the
// clock; a delete is a newer version too.
func TestPublish_AssignsGrowingVersions(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	before := time.Now().UnixMicro()
	var last int64
	for i := range 3 {
		p, err := e.client.Publish(ctx, "ticket", nowbridge.AppChange{ExternalID: "TCK-1", Fields: nowbridge.Fields{"title": "v" + string(rune('0'+i))}})
		if err != nil {
			t.Fatal(err)
		}
		if p.Version <= last || p.Version < before {
			t.Fatalf("publish %d got version %d after %d; want it larger, and at least the clock's %d µs", i, p.Version, last, before)
		}
		last = p.Version
	}
	d, err := e.client.PublishDelete(ctx, "ticket", nowbridge.AppChange{ExternalID: "TCK-1"})
	if err != nil {
		t.Fatal(err)
	}
	if d.Subject != "app.ticket.delete" || d.Version <= last {
		t.Fatalf("PublishDelete = %+v; want app.ticket.delete with a version above %d", d, last)
	}
}

// An app-supplied version may not go backwards, nor repeat with other
// content; the same version and content again is a safe retry.
func TestPublish_RefusesAVersionGoingBackwards(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	v5 := nowbridge.AppChange{ExternalID: "TCK-9", Version: 5, Fields: nowbridge.Fields{"title": "five"}}
	if _, err := e.client.Publish(ctx, "ticket", v5); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Publish(ctx, "ticket", nowbridge.AppChange{ExternalID: "TCK-9", Version: 4}); !errors.Is(err, nowbridge.ErrVersionNotNewer) {
		t.Errorf("version 4 after 5: err = %v, want ErrVersionNotNewer", err)
	}
	other := v5
	other.Fields = nowbridge.Fields{"title": "not five"}
	if _, err := e.client.Publish(ctx, "ticket", other); !errors.Is(err, nowbridge.ErrVersionNotNewer) {
		t.Errorf("version 5 again with other fields: err = %v, want ErrVersionNotNewer", err)
	}
	if p, err := e.client.Publish(ctx, "ticket", v5); err != nil || !p.Duplicate {
		t.Errorf("version 5 again unchanged = %+v, %v; want a stored-once duplicate", p, err)
	}
	if _, err := e.client.Publish(ctx, "ticket", nowbridge.AppChange{ExternalID: "TCK-9", Version: 6}); err != nil {
		t.Errorf("version 6: %v", err)
	}
	if _, err := e.client.Publish(ctx, "change", nowbridge.AppChange{ExternalID: "TCK-9", Version: 1}); err != nil {
		t.Errorf("version 1 of another entity's TCK-9: %v", err)
	}
	if n := len(e.storedApp()); n != 3 {
		t.Errorf("APP_EVENTS holds %d messages, want 3 (5, 6 and the change)", n)
	}
}

// Changes the bridge could never write back are refused before they are
// published, with what is wrong.
func TestPublish_RefusesWhatTheBridgeCannotWrite(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		name, entity string
		ch           nowbridge.AppChange
		want         string
	}{
		{"no external id", "ticket", nowbridge.AppChange{}, "external_id is empty"},
		{"entity with a dot", "tick.et", nowbridge.AppChange{ExternalID: "A"}, "entity"},
		{"upper-case entity", "Ticket", nowbridge.AppChange{ExternalID: "A"}, "entity"},
		{"script id", "ticket", nowbridge.AppChange{ExternalID: "JavaScript:gs.log(1)"}, "javascript:"},
		{"id over 100 characters", "ticket", nowbridge.AppChange{ExternalID: strings.Repeat("é", 101)}, "correlation_id"},
		{"control character", "ticket", nowbridge.AppChange{ExternalID: "A\nB"}, "control character"},
		{"padded id", "ticket", nowbridge.AppChange{ExternalID: " A"}, "white space"},
		{"bad sys_id", "ticket", nowbridge.AppChange{ExternalID: "A", SysID: "INC0010001"}, "sys_id"},
		{"negative version", "ticket", nowbridge.AppChange{ExternalID: "A", Version: -1}, "negative"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.client.Publish(context.Background(), c.entity, c.ch)
			if !errors.Is(err, nowbridge.ErrInvalidChange) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v; want ErrInvalidChange mentioning %q", err, c.want)
			}
		})
	}
	if n := len(e.storedApp()); n != 0 {
		t.Errorf("APP_EVENTS holds %d messages after refused publishes", n)
	}
	if _, err := e.client.Publish(context.Background(), "ticket", nowbridge.AppChange{ExternalID: strings.Repeat("é", 100)}); err != nil {
		t.Errorf("an id of exactly 100 characters: %v", err)
	}
}

// Without the bridge's streams, Publish says to start the bridge.
func TestPublish_WithoutTheBridgeSaysToStartIt(t *testing.T) {
	e := newBareEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	p, err := e.client.Publish(ctx, "ticket", nowbridge.AppChange{ExternalID: "TCK-1"})
	if err == nil || !strings.Contains(err.Error(), "APP_EVENTS") || !strings.Contains(err.Error(), "bridge running") {
		t.Fatalf("Publish without APP_EVENTS: %v; want an error naming the stream and the bridge", err)
	}
	if p.Version == 0 || p.MsgID == "" {
		t.Errorf("a failed Publish returned %+v; want the version and id to retry with", p)
	}
}
