package snsim

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// receiver is a bridge stand-in that verifies and decodes every webhook.
type receiver struct {
	t      *testing.T
	srv    *httptest.Server
	secret webhook.Secret
	mu     sync.Mutex
	got    []events.SNEvent
	ids    []string
	bodies [][]byte
}

func newReceiver(t *testing.T) *receiver {
	t.Helper()
	sec, err := webhook.ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	rc := &receiver{t: t, secret: sec}
	ver := &webhook.Verifier{Secrets: []webhook.Secret{sec}}
	val := events.NewValidator(TicketTables())
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		id := r.Header.Get(webhook.HeaderID)
		if err := ver.Verify(id, r.Header.Get(webhook.HeaderTimestamp), r.Header.Get(webhook.HeaderSignature), body); err != nil {
			t.Errorf("webhook %s: signature does not verify: %v", id, err)
			w.WriteHeader(401)
			return
		}
		evs, err := val.DecodeBody(body)
		if err != nil {
			t.Errorf("webhook %s: body does not decode: %v\n%s", id, err, body)
			w.WriteHeader(422)
			return
		}
		rc.mu.Lock()
		rc.got = append(rc.got, evs...)
		rc.ids = append(rc.ids, id)
		rc.bodies = append(rc.bodies, body)
		rc.mu.Unlock()
		w.WriteHeader(202)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) target() WebhookTarget {
	return WebhookTarget{URL: rc.srv.URL, Secrets: []webhook.Secret{rc.secret}}
}

func (rc *receiver) events() ([]events.SNEvent, []string, [][]byte) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]events.SNEvent(nil), rc.got...), append([]string(nil), rc.ids...), append([][]byte(nil), rc.bodies...)
}

func wait(t *testing.T, s *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := s.WaitWebhooks(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestWebhook_SignedVerifiableAndLikeTheBusinessRule(t *testing.T) {
	rc := newReceiver(t)
	clk := newClock()
	h := newHarness(t, Config{Now: clk.Now, InstanceName: "dev12345", Webhooks: []WebhookTarget{rc.target()}})
	rec, err := h.sim.Insert("incident", map[string]string{"short_description": "Email down", "comments": "It broke"}, "beth.anglin")
	if err != nil {
		t.Fatal(err)
	}
	id := rec["sys_id"]
	clk.Add(time.Second)
	if r := h.do("PATCH", "/api/now/table/incident/"+id, `{"state":"2","work_notes":"on it"}`); r.status != 200 {
		t.Fatalf("PATCH: %d %s", r.status, r.body)
	}
	h.do("PATCH", "/api/now/table/incident/"+id, `{"state":"2"}`) // no change: no webhook
	if err := h.sim.Delete("incident", id, "beth.anglin"); err != nil {
		t.Fatal(err)
	}
	wait(t, h.sim)
	evs, ids, bodies := rc.events()
	if len(evs) != 3 {
		t.Fatalf("got %d webhooks, want insert, update, delete: %v", len(evs), ids)
	}
	ins, upd, del := evs[0], evs[1], evs[2]
	if ins.Action != "insert" || ins.SysModCount != 0 || ins.SysUpdatedBy != "beth.anglin" || ins.Instance != "dev12345" ||
		ins.Record["comments"] != "2026-11-28 10:00:00 - Beth Anglin (Additional comments)\nIt broke\n\n" || ins.Record["number"] != "INC0010001" {
		t.Errorf("insert event: %+v", ins)
	}
	if fmt.Sprint(ins.Changed) != "[active comments impact number priority short_description state urgency]" {
		t.Errorf("insert changed = %v", ins.Changed)
	}
	if upd.Action != "update" || upd.SysModCount != 1 || upd.SysUpdatedBy != DefaultAppUser || fmt.Sprint(upd.Changed) != "[state work_notes]" ||
		upd.Record["comments"] != "" || upd.Record["work_notes"] == "" || upd.SysUpdatedOn != "2026-11-28 10:00:01" {
		t.Errorf("update event: %+v", upd)
	}
	if del.Action != "delete" || len(del.Changed) != 0 || del.SysModCount != 1 {
		t.Errorf("delete event: %+v", del)
	}
	if want := events.MsgID("incident", id, 1, "update"); ids[1] != want {
		t.Errorf("webhook-id %q, want %q", ids[1], want)
	}
	if _, ok := upd.Record["caller_id"]; ok || len(upd.Record) != len(DefaultWebhookFields["incident"]) {
		t.Errorf("record holds %d fields, want exactly the business rule's default list", len(upd.Record))
	}
	again, _ := events.EncodeWebhookBody(&upd)
	if !bytes.Equal(again, bodies[1]) {
		t.Errorf("body is not the canonical encoding\n got  %s\n want %s", bodies[1], again)
	}
	if st := h.sim.WebhookStats(); st.Sent != 3 || st.Fired != 3 {
		t.Errorf("stats %+v", st)
	}
}

func TestWebhook_OrderedPerRecord(t *testing.T) {
	rc := newReceiver(t)
	h := newHarness(t, Config{Webhooks: []WebhookTarget{rc.target()}})
	var ids []string
	for range 5 {
		r, err := h.sim.Insert("incident", map[string]string{"short_description": "x"}, "beth.anglin")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r["sys_id"])
	}
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() {
			for i := range 20 {
				if _, err := h.sim.Update("incident", id, map[string]string{"short_description": fmt.Sprint(i)}, "abel.tuter"); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	wait(t, h.sim)
	evs, _, _ := rc.events()
	last := map[string]int64{}
	for _, e := range evs {
		if prev, ok := last[e.SysID]; ok && int64(e.SysModCount) != prev+1 {
			t.Fatalf("record %s: version %d arrived after %d", e.SysID, e.SysModCount, prev)
		}
		last[e.SysID] = int64(e.SysModCount)
	}
	if len(evs) != 105 {
		t.Errorf("%d webhooks, want 105", len(evs))
	}
}

func TestWebhook_DropRateSkipUserAndNoWorkflow(t *testing.T) {
	rc := newReceiver(t)
	h := newHarness(t, Config{Seed: 7, Webhooks: []WebhookTarget{rc.target()}, WebhookOptions: WebhookOptions{DropRate: 0.3}})
	for range 200 {
		if _, err := h.sim.Insert("incident", map[string]string{"short_description": "x"}, "beth.anglin"); err != nil {
			t.Fatal(err)
		}
	}
	wait(t, h.sim)
	st := h.sim.WebhookStats()
	if st.Dropped+st.Sent != 200 || st.Dropped < 35 || st.Dropped > 85 {
		t.Errorf("drop rate 0.3 over 200 changes: %+v", st)
	}
	if err := h.sim.SetWebhookOptions(WebhookOptions{SkipUser: DefaultAppUser}); err != nil {
		t.Fatal(err)
	}
	before, _, _ := rc.events()
	h.do("POST", "/api/now/table/incident", `{"short_description":"from the bridge"}`)
	if _, err := h.sim.InsertNoWorkflow("incident", map[string]string{"short_description": "import"}, "admin"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.sim.Insert("incident", map[string]string{"short_description": "human"}, "beth.anglin"); err != nil {
		t.Fatal(err)
	}
	wait(t, h.sim)
	after, _, _ := rc.events()
	if len(after)-len(before) != 1 || after[len(after)-1].Record["short_description"] != "human" {
		t.Errorf("with skip user and setWorkflow(false), got %d new webhooks, want only the human's", len(after)-len(before))
	}
	if st := h.sim.WebhookStats(); st.Skipped != 1 {
		t.Errorf("skipped %d, want 1", st.Skipped)
	}
}

func TestWebhook_BeforeResponseKnob(t *testing.T) {
	rc := newReceiver(t)
	h := newHarness(t, Config{Webhooks: []WebhookTarget{rc.target()}, WebhookOptions: WebhookOptions{Delay: 100 * time.Millisecond}})
	h.do("POST", "/api/now/table/incident", `{"short_description":"a"}`)
	if evs, _, _ := rc.events(); len(evs) != 0 {
		t.Errorf("async mode: webhook arrived before the API answered (delay 100ms)")
	}
	wait(t, h.sim)
	_ = h.sim.SetWebhookOptions(WebhookOptions{BeforeResponse: true, Delay: 50 * time.Millisecond})
	h.do("POST", "/api/now/table/incident", `{"short_description":"b"}`)
	if evs, _, _ := rc.events(); len(evs) != 2 {
		t.Errorf("before-response mode: %d webhooks when the API answered, want 2", len(evs))
	}
}
