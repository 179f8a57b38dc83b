package servicenow_test

import (
	"context"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/webhook"
	"github.com/nowbridge/nowbridge/servicenow"
)

// attachmentValidator is the bridge's ingest validator with sys_attachment
// among the tables, as the receiver accepts it whatever BRIDGE_TABLES says.
func attachmentValidator() *events.Validator {
	return events.NewValidator(append(servicenow.ShippedTables(), servicenow.AttachmentTable))
}

// attachmentScenario is the sys_attachment GlideRecord that produces ev in
// the attachment rule.
func attachmentScenario(ev events.SNEvent, secretProp string, ts int64) scenario {
	values := map[string]string{
		"sys_id":         ev.SysID,
		"sys_mod_count":  strconv.FormatInt(int64(ev.SysModCount), 10),
		"sys_updated_on": ev.SysUpdatedOn,
		"sys_updated_by": ev.SysUpdatedBy,
	}
	maps.Copy(values, ev.Record)
	return scenario{
		Name:      ev.Action,
		Rule:      "webhook_attachment.js",
		Condition: servicenow.AttachmentConditionScript,
		Properties: map[string]string{
			"instance_name":            ev.Instance,
			"nowbridge.webhook_url":    webhookURL,
			"nowbridge.webhook_secret": secretProp,
		},
		User:   ev.SysUpdatedBy,
		NowMS:  ts*1000 + 999,
		Record: shimRecord{Table: servicenow.AttachmentTable, Operation: ev.Action, Values: values},
	}
}

// TestContract_AttachmentRuleSendsWhatTheSimulatorSends: a person attaches
// a file with awkward characters in its name to an incident and removes it;
// the simulator's rule emulation sends two webhooks, none for an attachment
// of an unsynced table. The real script, run on the same sys_attachment
// state, must send byte-identical bodies, ids and signatures, which the
// bridge's verifier and validator accept.
func TestContract_AttachmentRuleSendsWhatTheSimulatorSends(t *testing.T) {
	nodePath(t)
	vf := loadVectors(t)
	secret := mustSecrets(t, vf.Secret)[0]
	var mu sync.Mutex
	var got []captured
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, captured{headers: r.Header.Clone(), body: string(b)})
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	defer rcv.Close()
	sim := snsim.New(snsim.Config{
		InstanceName:   "dev12345",
		Seed:           11,
		Webhooks:       []snsim.WebhookTarget{{URL: rcv.URL, Secrets: []webhook.Secret{secret}}},
		WebhookOptions: snsim.WebhookOptions{Fields: map[string][]string{"incident": servicenow.DefaultFieldList("incident")}},
	})
	defer sim.Close()
	inc, err := sim.InsertNoWorkflow("incident", map[string]string{"short_description": "screen broken"}, "beth.anglin")
	if err != nil {
		t.Fatal(err)
	}
	prb, err := sim.InsertNoWorkflow("problem", map[string]string{"short_description": "screens"}, "beth.anglin")
	if err != nil {
		t.Fatal(err)
	}
	id := sim.AddAttachment("incident", inc["sys_id"], "Screen \"shot\" é 漢字 \U0001F680.png", "image/png", []byte("\x89PNG\r\n\x1a\n..."))
	sim.AddAttachment("problem", prb["sys_id"], "not-synced.txt", "text/plain", []byte("x"))
	if !sim.RemoveAttachment(id) {
		t.Fatal("the attachment was not there to remove")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sim.WaitWebhooks(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 {
		t.Fatalf("the simulator sent %d webhooks, want 2 (insert and delete of the incident's attachment)", len(got))
	}
	verifier := webhook.Verifier{Secrets: []webhook.Secret{secret}, Tolerance: 5 * time.Minute}
	var scs []scenario
	for i, cp := range got {
		evs, err := attachmentValidator().DecodeBody([]byte(cp.body))
		if err != nil {
			t.Fatalf("webhook %d: the ingest validator rejects the simulator's body: %v\n%s", i, err, cp.body)
		}
		ts, _ := strconv.ParseInt(cp.headers.Get(webhook.HeaderTimestamp), 10, 64)
		scs = append(scs, attachmentScenario(evs[0], vf.Secret, ts))
	}
	res := runNode(t, scs)
	for i, r := range res {
		if !r.Condition {
			t.Fatalf("%s: the script's condition is false for an attachment of incident (logs %v)", r.Name, r.Logs)
		}
		req := onlyRequest(t, r)
		if req.Body != got[i].body {
			t.Errorf("%s: bodies differ\n script: %s\n    sim: %s", r.Name, req.Body, got[i].body)
		}
		for _, h := range []string{webhook.HeaderID, webhook.HeaderTimestamp, webhook.HeaderSignature} {
			if req.Headers[h] != got[i].headers.Get(h) {
				t.Errorf("%s: %s differs: script %q, simulator %q", r.Name, h, req.Headers[h], got[i].headers.Get(h))
			}
		}
		ts, _ := strconv.ParseInt(req.Headers[webhook.HeaderTimestamp], 10, 64)
		verifier.Now = func() time.Time { return time.Unix(ts, 0) }
		if err := verifier.Verify(req.Headers[webhook.HeaderID], req.Headers[webhook.HeaderTimestamp], req.Headers[webhook.HeaderSignature], []byte(req.Body)); err != nil {
			t.Errorf("%s: the bridge's verifier rejects the script's signature: %v", r.Name, err)
		}
		checkAttachmentBody(t, r.Name, req.Body)
	}
	if want := events.MsgID(servicenow.AttachmentTable, id, 0, "insert"); res[0].Requests[0].Headers[webhook.HeaderID] != want {
		t.Errorf("insert webhook-id %q, want %q", res[0].Requests[0].Headers[webhook.HeaderID], want)
	}
}

// checkAttachmentBody holds a body to the documented shape: table
// sys_attachment, sys_id, action insert or delete, sys_mod_count,
// sys_updated_on (instance, sys_updated_by optional), no changed, and a
// record of exactly the documented fields (hash where present), every value
// a string; no content.
func checkAttachmentBody(t *testing.T, name, body string) {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("%s: body is not a JSON object: %v", name, err)
	}
	for k := range m {
		if !slices.Contains([]string{"instance", "table", "sys_id", "action", "sys_mod_count", "sys_updated_on", "sys_updated_by", "record"}, k) {
			t.Errorf("%s: body has undocumented property %q: %s", name, k, body)
		}
	}
	var raw map[string]any
	_ = json.Unmarshal([]byte(body), &raw)
	table, _ := raw["table"].(string)
	action, _ := raw["action"].(string)
	modCount, _ := raw["sys_mod_count"].(string)
	record, _ := raw["record"].(map[string]any)
	if table != servicenow.AttachmentTable || (action != "insert" && action != "delete") || modCount == "" {
		t.Errorf("%s: table %q action %q sys_mod_count %q, want sys_attachment, insert|delete, a string count", name, table, action, modCount)
	}
	keys := slices.Sorted(maps.Keys(record))
	want := servicenow.AttachmentFields()
	if !slices.Equal(keys, want) && !slices.Equal(keys, slices.DeleteFunc(slices.Clone(want), func(f string) bool { return f == "hash" })) {
		t.Errorf("%s: record fields %v, want %v (hash only where the instance has it)", name, keys, want)
	}
	for k, v := range record {
		if _, ok := v.(string); !ok {
			t.Errorf("%s: record.%s is %T, want a string", name, k, v)
		}
	}
}

// The Go mirrors of the rule's field list agree with each other (the
// script's list is held to them by the body comparisons above).
func TestContract_AttachmentFieldListsAgree(t *testing.T) {
	if !slices.Equal(servicenow.AttachmentFields(), snsim.AttachmentWebhookFields) {
		t.Errorf("servicenow.AttachmentFields %v, snsim.AttachmentWebhookFields %v", servicenow.AttachmentFields(), snsim.AttachmentWebhookFields)
	}
	if !slices.IsSorted(servicenow.AttachmentFields()) {
		t.Error("the attachment fields must be sorted: the script sends them in this order")
	}
}

// TestContract_AttachmentRuleCondition: only attachments of tables
// nowbridge.tables lists, the kill switch and the skip user, as the other
// rules; a release without the hash field sends the rest without a warning.
func TestContract_AttachmentRuleCondition(t *testing.T) {
	vf := loadVectors(t)
	ev := events.SNEvent{Instance: "dev12345", Table: servicenow.AttachmentTable, SysID: "6ea10fe64f411200adf9f8e18110c739", Action: "insert",
		SysModCount: 0, SysUpdatedOn: "2016-01-22 15:14:07", SysUpdatedBy: "beth.anglin",
		Record: events.Fields{"content_type": "image/jpeg", "file_name": "Issue_screenshot", "hash": "8671fa6613cd1c6e82c0e1d6b940ae0771d1d8b3f56019f8274ed501407ffc2a",
			"size_bytes": "36597", "table_name": "incident", "table_sys_id": "d71f7935c0a8016700802b64c67c11c6"}}
	base := func(name string, mod func(*scenario)) scenario {
		sc := attachmentScenario(ev, vf.Secret, vf.Timestamp)
		sc.Name = name
		if mod != nil {
			mod(&sc)
		}
		return sc
	}
	scs := []scenario{
		base("incident, default tables", nil),
		base("problem, not listed", func(sc *scenario) { sc.Record.Values["table_name"] = "problem" }),
		base("problem, listed", func(sc *scenario) {
			sc.Record.Values["table_name"] = "problem"
			sc.Properties["nowbridge.tables"] = "incident, problem"
		}),
		base("disabled", func(sc *scenario) { sc.Properties["nowbridge.enabled"] = "false" }),
		base("skip user attached it", func(sc *scenario) { sc.Properties["nowbridge.skip_user"] = "beth.anglin" }),
		base("no hash field", func(sc *scenario) { delete(sc.Record.Values, "hash") }),
		base("delete", func(sc *scenario) { sc.Record.Operation = "delete" }),
		base("the rule's condition on another table", func(sc *scenario) { sc.Record.Table = "incident" }),
	}
	res := runNode(t, scs)
	wantCond := []bool{true, false, true, false, false, true, true, false}
	for i, r := range res {
		if r.Condition != wantCond[i] {
			t.Errorf("%s: condition %v, want %v", r.Name, r.Condition, wantCond[i])
		}
		if !r.Condition && len(r.Requests) != 0 {
			t.Errorf("%s: %d requests sent with a false condition", r.Name, len(r.Requests))
		}
	}
	for _, i := range []int{0, 2, 5, 6} {
		req := onlyRequest(t, res[i])
		checkAttachmentBody(t, res[i].Name, req.Body)
		evs, err := attachmentValidator().DecodeBody([]byte(req.Body))
		if err != nil {
			t.Fatalf("%s: the ingest validator rejects the body: %v\n%s", res[i].Name, err, req.Body)
		}
		if i == 0 {
			if body, _ := events.EncodeWebhookBody(&ev); string(body) != req.Body {
				t.Errorf("Go's EncodeWebhookBody differs from the script\n    go: %s\nscript: %s", body, req.Body)
			}
		}
		if i == 5 {
			if _, has := evs[0].Record["hash"]; has || len(res[i].Logs) != 0 {
				t.Errorf("no hash field: record %v, logs %v; want no hash and no warning", evs[0].Record, res[i].Logs)
			}
		}
		if i == 6 && evs[0].Action != "delete" {
			t.Errorf("delete rule run sent action %q", evs[0].Action)
		}
	}
}
