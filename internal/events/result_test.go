package events

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestResult_SubjectMsgIDAndURL(t *testing.T) {
	if got := ResultSubject("ticket", OutcomeCreated); got != "bridge.result.ticket.created" {
		t.Errorf("ResultSubject = %q", got)
	}
	a := ResultMsgID("ticket", "TCK-1", 7, OutcomeCreated)
	if a != "result:ticket:TCK-1:7:created" || a == ResultMsgID("ticket", "TCK-1", 7, OutcomeRetrying) || a == ResultMsgID("ticket", "TCK-1", 8, OutcomeCreated) {
		t.Errorf("ResultMsgID must differ per external id, version and outcome: %q", a)
	}
	if got := RecordURL("https://dev12345.service-now.com/", "incident", "9d385017c611228701d22104cc95c371"); got != "https://dev12345.service-now.com/nav_to.do?uri=incident.do?sys_id=9d385017c611228701d22104cc95c371" {
		t.Errorf("RecordURL = %q", got)
	}
	if RecordURL("", "incident", "x") != "" || RecordURL("https://x", "incident", "") != "" {
		t.Error("RecordURL without an instance or sys_id must be empty")
	}
}

func TestResult_JSONShape(t *testing.T) {
	mc := int64(4)
	r := Result{ExternalID: "TCK-1", Version: 3, Entity: "ticket", Action: AppUpsert, Outcome: OutcomeRejected, Table: "incident",
		SysID: "9d385017c611228701d22104cc95c371", Number: "INC0010001", SysModCount: &mc,
		Error: &ResultError{Status: 403, Message: "Operation Failed", Detail: "Data Policy Exception", Hint: "set the close code", DeadLettered: true}}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"external_id":"TCK-1"`, `"version":3`, `"outcome":"rejected"`, `"sys_mod_count":4`, `"dead_lettered":true`, `"status":403`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %s", b, want)
		}
	}
	if r.Final() != true || (Result{Outcome: OutcomeRetrying}).Final() {
		t.Error("only retrying is not final")
	}
}
