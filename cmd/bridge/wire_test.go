package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/outbound"
	"github.com/nowbridge/nowbridge/internal/replay"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/state"
)

const customMapping = `table: incident
entity: case
link:
  field: correlation_id
fields:
  - saas: title
    servicenow: short_description
  - saas: severity
    servicenow: u_severity
    values:
      low: "3"
      high: "1"
  - saas: region
    servicenow: u_region
    direction: to_saas
`

// wireNATS is a nats-server with the bridge's streams and buckets.
func wireNATS(t *testing.T) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, js := natstest.Connect(t, natstest.RunServer(t))
	if err := broker.EnsureAll(t.Context(), js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// A mapping file in BRIDGE_MAPPING_DIR decides what the apply pipeline
// wired from the configuration hands the app: its entity, names and values.
func TestWire_CustomMappingFileDecidesWhatTheAppGets(t *testing.T) {
	nc, js := wireNATS(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "incident.yaml"), []byte(customMapping), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.MappingDir = dir
	b, err := wire(t.Context(), cfg, js, wireOptions{Registerer: prometheus.NewRegistry(), ServiceNow: snIfSet, Apply: true, LinkBack: true, Writeback: true, Reconcile: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.sn != nil || b.writer != nil || b.writeback != nil || b.reconciler != nil {
		t.Fatal("without the ServiceNow settings, wire built a client, writer, writeback or reconciler")
	}
	applied := make(chan *nats.Msg, 4)
	sub, err := nc.ChanSubscribe(events.ApplySubjects, applied)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- b.apply.Run(ctx) }()
	defer func() { cancel(); <-done }()

	publishSN(t, js, events.SNEvent{Table: "incident", SysID: "9d385017c611228701d22104cc95c371", Action: events.ActionUpdate, SysModCount: 2,
		SysUpdatedOn: "2026-11-28 10:00:02", Record: events.Fields{"short_description": "Email down", "u_severity": "1", "u_region": "emea"}})
	select {
	case m := <-applied:
		var got struct {
			Fields map[string]string `json:"fields"`
		}
		_ = json.Unmarshal(m.Data, &got)
		want := map[string]string{"title": "Email down", "severity": "high", "region": "emea"}
		if m.Subject != "bridge.apply.case.update" || !maps.Equal(got.Fields, want) {
			t.Fatalf("got %s %v, want bridge.apply.case.update %v", m.Subject, got.Fields, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("nothing reached the app within 10s")
	}
}

// What stops start-up names the setting or the file line to fix.
func TestWire_BadSettingsStopStartUpNamingTheFix(t *testing.T) {
	_, js := wireNATS(t)
	broken := t.TempDir()
	if err := os.WriteFile(filepath.Join(broken, "incident.yaml"), []byte(strings.Replace(customMapping, "direction: to_saas", "direction: sideways", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		tune  func(*config.Config)
		opts  wireOptions
		want  string
		usage bool
	}{
		{"broken mapping file", func(c *config.Config) { c.MappingDir = broken }, wireOptions{Apply: true}, "incident.yaml line 15", false},
		{"mapping dir is a file", func(c *config.Config) { c.MappingDir = notDir }, wireOptions{Apply: true}, "BRIDGE_MAPPING_DIR " + notDir + ": not a readable directory", false},
		{"table without a mapping", func(c *config.Config) { c.Tables = []string{"incident", "u_custom"} }, wireOptions{Apply: true}, "add u_custom.yaml to BRIDGE_MAPPING_DIR", false},
		{"unknown applier", func(c *config.Config) { c.Applier = "carrier-pigeon" }, wireOptions{Apply: true}, "BRIDGE_APPLIER: must be nats or http", false},
		{"HTTP applier without a secret", func(c *config.Config) { c.Applier, c.ApplyURL = "http", "http://127.0.0.1:1/apply" }, wireOptions{Apply: true}, "set BRIDGE_APPLY_SECRET or BRIDGE_WEBHOOK_SECRETS", false},
		{"a tool that needs ServiceNow", func(*config.Config) {}, wireOptions{ServiceNow: snRequired}, "BRIDGE_SN_INSTANCE_URL: required", true},
		{"a delete state no table has", func(c *config.Config) {
			c.SNInstanceURL, c.SNClientID, c.SNClientSecret = "http://127.0.0.1:1", "id", "secret"
			c.WritebackDeleteState = "incident=42"
		}, wireOptions{ServiceNow: snRequired}, "42", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Default()
			tc.tune(&cfg)
			b, err := wire(t.Context(), cfg, js, tc.opts)
			if err == nil {
				b.Close()
				t.Fatal("wired; want an error")
			}
			var ue usageError
			if !strings.Contains(err.Error(), tc.want) || errors.As(err, &ue) != tc.usage {
				t.Fatalf("err = %v (usage error: %v); want one containing %q (usage error: %v)", err, errors.As(err, &ue), tc.want, tc.usage)
			}
		})
	}
}

// Every writeback setting reaches the writer, whichever command wires it.
func TestWritebackConfig_CarriesEverySetting(t *testing.T) {
	cfg := config.Default()
	cfg.WritebackDelete, cfg.WritebackDeleteState, cfg.CloseCode = "delete", "incident=7,change_request=4", "Workaround provided"
	cfg.ConflictPolicy, cfg.ConflictPolicies = "servicenow_wins", map[string]string{"short_description": "saas_wins"}
	cfg.WritebackBlind, cfg.WritebackWorkers, cfg.HandOverGrace = true, 3, 7*time.Second
	cfg.SNInstanceURL = "https://dev12345.service-now.com"
	got := writebackConfig(cfg, nil, nil)
	if got.DeleteMode != outbound.DeleteRecord || got.DeleteState != cfg.WritebackDeleteState || got.CloseCode != cfg.CloseCode ||
		got.DefaultPolicy != outbound.ServiceNowWins || got.Policies["short_description"] != outbound.SaaSWins ||
		!got.BlindWrites || got.Workers != 3 || got.HandOverGrace != 7*time.Second || got.InstanceURL != cfg.SNInstanceURL || got.InstanceURL == "" {
		t.Fatalf("writebackConfig = %+v; a setting did not reach the writer", got)
	}
}

// publishSN stores an event in SN_EVENTS the way the receiver does.
func publishSN(t *testing.T, js jetstream.JetStream, ev events.SNEvent) {
	t.Helper()
	body, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	msg := &nats.Msg{Subject: ev.Subject(), Data: body, Header: nats.Header{}}
	msg.Header.Set(events.HeaderMsgID, ev.MsgID())
	msg.Header.Set(events.HeaderSource, events.SourceWebhook)
	if _, err := js.PublishMsg(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
}

// replayEnv is a NATS server and the simulator holding one linked record
// of each of two tables, each with an app delete waiting in APP_EVENTS.
type replayEnv struct {
	vars map[string]string
	sim  *snsim.Server
	ids  map[string]string // table -> sys_id
}

func newReplayEnv(t *testing.T) *replayEnv {
	t.Helper()
	nc, js := wireNATS(t)
	sim := snsim.New(snsim.Config{ClientID: "bridge", ClientSecret: "s3cret", Seed: 5})
	t.Cleanup(sim.Close)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	store, links, err := state.Open(t.Context(), js)
	if err != nil {
		t.Fatal(err)
	}
	e := &replayEnv{sim: sim, ids: map[string]string{}, vars: map[string]string{
		"BRIDGE_NATS_URL": nc.ConnectedUrl(), "BRIDGE_TABLES": "incident,change_request",
		"BRIDGE_SN_INSTANCE_URL": srv.URL, "BRIDGE_SN_CLIENT_ID": "bridge", "BRIDGE_SN_CLIENT_SECRET": "s3cret",
	}}
	for _, r := range []struct{ table, entity, id, state string }{{"incident", "ticket", "TCK-DEL", "2"}, {"change_request", "change", "CR-DEL", "-4"}} {
		rec, err := sim.Insert(r.table, map[string]string{"short_description": "Deleted in the app", "state": r.state, "correlation_id": r.id}, "beth.anglin")
		if err != nil {
			t.Fatal(err)
		}
		var mc int64
		fmt.Sscan(rec["sys_mod_count"], &mc)
		if _, err := store.Advance(t.Context(), r.table, rec["sys_id"], state.Record{Version: mc, UpdatedOn: rec["sys_updated_on"],
			Fields: map[string]string{"short_description": rec["short_description"], "state": r.state}}); err != nil {
			t.Fatal(err)
		}
		if err := links.Link(t.Context(), r.entity, r.id, r.table, rec["sys_id"]); err != nil {
			t.Fatal(err)
		}
		e.ids[r.table] = rec["sys_id"]
		body, _ := json.Marshal(events.AppChange{ExternalID: r.id, Version: 1, UpdatedAt: time.Now().UTC()})
		if _, err := js.Publish(t.Context(), events.AppSubject(r.entity, events.AppDelete), body,
			jetstream.WithMsgID(events.AppMsgID(r.entity, r.id, 1, events.AppDelete))); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// replay runs `bridge replay --stream app` with extra settings and checks
// both deletes were applied.
func (e *replayEnv) replay(t *testing.T, extra map[string]string) {
	t.Helper()
	vars := maps.Clone(e.vars)
	maps.Copy(vars, extra)
	code, out, stderr := runTool(t, vars, "", "replay", "--stream", "app", "--json")
	var sum replay.Summary
	if err := json.Unmarshal([]byte(out), &sum); code != 0 || err != nil || sum.Applied != 2 || sum.Failed != 0 {
		t.Fatalf("replay --stream app: exit %d, %s\n%s", code, out, stderr)
	}
}

// The regression of issue 11: `bridge replay --stream app` once built its
// writer without the writeback settings, so a replayed app delete ignored
// BRIDGE_WRITEBACK_DELETE. Now it is wired as serve wires it.
func TestReplay_AppDeleteFollowsTheWritebackSettings(t *testing.T) {
	t.Run("BRIDGE_WRITEBACK_DELETE=delete deletes", func(t *testing.T) {
		e := newReplayEnv(t)
		e.replay(t, map[string]string{"BRIDGE_WRITEBACK_DELETE": "delete"})
		for table, id := range e.ids {
			if rec, ok := e.sim.Get(table, id); ok {
				t.Errorf("%s %s survived a replayed app delete with BRIDGE_WRITEBACK_DELETE=delete: state %s", table, id, rec["state"])
			}
		}
	})
	t.Run("default: each table's mapping resolves", func(t *testing.T) {
		e := newReplayEnv(t)
		e.replay(t, nil)
		inc, _ := e.sim.Get("incident", e.ids["incident"])
		if inc["state"] != "6" || inc["close_code"] != "Solution provided" || inc["close_notes"] == "" {
			t.Errorf("incident after a replayed app delete: state %q close_code %q close_notes %q; want 6 with the instance's close code (Solution provided) and notes",
				inc["state"], inc["close_code"], inc["close_notes"])
		}
		chg, _ := e.sim.Get("change_request", e.ids["change_request"])
		if chg["state"] != "4" {
			t.Errorf("change_request after a replayed app delete: state %q, want 4 (canceled, its mapping's delete)", chg["state"])
		}
	})
	t.Run("delete state and close code overrides", func(t *testing.T) {
		e := newReplayEnv(t)
		e.replay(t, map[string]string{"BRIDGE_WRITEBACK_DELETE_STATE": "incident=7", "BRIDGE_CLOSE_CODE": "Workaround provided"})
		inc, _ := e.sim.Get("incident", e.ids["incident"])
		if inc["state"] != "7" || inc["close_code"] != "Workaround provided" {
			t.Errorf("incident: state %q close_code %q; want 7 with BRIDGE_CLOSE_CODE's Workaround provided", inc["state"], inc["close_code"])
		}
	})
}
