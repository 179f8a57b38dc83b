package console

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/state"
	"github.com/nowbridge/nowbridge/internal/trace"
)

func TestConsole_TracePageShowsTheRecordsDecisionsEscaped(t *testing.T) {
	var store *trace.Store
	f := newFixture(t, "", func(c *Config) {
		states, links, err := state.Open(t.Context(), c.JS)
		if err != nil {
			t.Fatal(err)
		}
		store = trace.NewStore(c.JS, states, links)
		c.Trace = store
	})
	nc := f.js.Conn()
	rec, err := trace.NewRecorder(trace.RecorderConfig{Conn: nc})
	if err != nil {
		t.Fatal(err)
	}
	const sysID = "9d385017c611228701d22104cc95c371"
	at := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
	rec.Record(trace.Entry{Time: at, Stage: trace.StageApply, Source: trace.SourceWebhook, Table: "incident", SysID: sysID,
		Number: "INC0010006", Version: 3, Decision: trace.Applied})
	rec.Record(trace.Entry{Time: at.Add(time.Second), Stage: trace.StageWriteback, Source: trace.SourceApp, Table: "incident", SysID: sysID,
		Entity: "ticket", ExternalID: "TCK-9", Version: trace.NoVersion, AppVersion: 4, Decision: trace.Rejected,
		Reason: `PATCH incident: 403 <script>alert("trace")</script>`, Hint: "grant write on incident.state"})
	rec.Close()

	c := f.client()
	a := f.do(c, "GET", "/trace?q=INC0010006", nil, nil)
	if a.code != http.StatusOK {
		t.Fatalf("GET /trace?q=INC0010006: %d:\n%s", a.code, a.body)
	}
	for _, want := range []string{
		`id="trace-number">INC0010006<`, `<code id="trace-record">incident/` + sysID + `<`,
		`data-stage="apply" data-decision="applied"`, `data-stage="writeback" data-decision="rejected"`,
		`<span class="tag bad">rejected</span>`, "hint: grant write on incident.state",
		"&lt;script&gt;alert(&#34;trace&#34;)&lt;/script&gt;",
	} {
		if !strings.Contains(a.body, want) {
			t.Errorf("the trace page lacks %s", want)
		}
	}
	if strings.Contains(a.body, "<script>alert") {
		t.Error("the trace page renders a reason's markup as HTML")
	}
	if i, j := strings.Index(a.body, `data-decision="applied"`), strings.Index(a.body, `data-decision="rejected"`); i < 0 || j < i {
		t.Error("the steps are not in time order")
	}
	if t.Failed() {
		t.Logf("trace page:\n%s", a.body)
	}
	if a := f.do(c, "GET", "/trace?q=INC0099999", nil, nil); a.code != http.StatusNotFound || !strings.Contains(a.body, `id="trace-not-found"`) {
		t.Errorf("an unknown number: %d, want 404 and the not-found note:\n%s", a.code, a.body)
	}
}
