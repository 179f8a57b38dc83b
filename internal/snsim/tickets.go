package snsim

import (
	"fmt"
	"slices"
	"strings"
)

// ticketTable is everything the simulator knows about one ticket table (an
// extension of task): its fields beyond task's, its choice lists, what an
// insert fills, what the platform derives and what its data policy refuses.
// It is the one source of truth per table: the schema, the sys_choice rows,
// the dictionary and the write rules are all built from it. The facts and
// their sources are in docs/servicenow-tables.md.
type ticketTable struct {
	name, label, prefix string
	read                access // who may read (and, for accessHR, write) it

	state    []Choice // task.state's choices on this table (a dictionary override)
	priority []Choice // task.priority's choices on this table
	// closeNotesLabel is task.close_notes' label on this table.
	closeNotesLabel string
	fields          []*field // the table's own fields, after task's

	// defaults are written on insert where the write left a field empty
	// (after task's own: active, opened_at, opened_by, number, ...).
	defaults map[string]string
	// priorityMatrix: priority is computed from impact and urgency (the
	// platform's priority data lookup); a priority sent is overwritten.
	priorityMatrix bool
	// mirror is a field that always holds the state (incident_state).
	mirror string
	// inactive are the states in which active is "false".
	inactive []string
	// resolvedState stamps resolved_at and resolved_by when entered.
	resolvedState string
	// closedStates stamp closed_at and closed_by when entered.
	closedStates []string
	// policies are the table's data policies, judged on the record as a
	// write leaves it.
	policies []dataPolicy
}

// dataPolicy makes fields mandatory while a record is in one of states:
// always the required ones, and more depending on the value of dependsOn
// (problem: what a resolution code needs).
type dataPolicy struct {
	states    []string
	required  []string
	dependsOn string
	byValue   map[string][]string
}

// missing lists the labels of the mandatory fields the row leaves empty,
// in policy order; nil when the policy does not apply or is satisfied.
func (p dataPolicy) missing(t *table, r *row) []string {
	if !slices.Contains(p.states, t.get("state", r)) {
		return nil
	}
	var out []string
	check := func(names []string) {
		for _, n := range names {
			if f, i, ok := t.s.field(n); ok && r.vals[i] == "" {
				out = append(out, f.label)
			}
		}
	}
	check(p.required)
	if p.dependsOn != "" {
		check(p.byValue[t.get(p.dependsOn, r)])
	}
	return out
}

// Choice lists of the ticket tables, in sys_choice sequence order. Sources:
// docs/servicenow-tables.md.
var (
	changeStates     = choiceList("-5", "New", "-4", "Assess", "-3", "Authorize", "-2", "Scheduled", "-1", "Implement", "0", "Review", "3", "Closed", "4", "Canceled")
	changePriorities = choiceList("1", "1 - Critical", "2", "2 - High", "3", "3 - Moderate", "4", "4 - Low")
	changeRisks      = choiceList("1", "Very High", "2", "High", "3", "Moderate", "4", "Low")
	changeTypes      = choiceList("standard", "Standard", "normal", "Normal", "emergency", "Emergency")
	changeCategories = choiceList("hardware", "Hardware", "software", "Software", "service", "Service", "system_software", "System Software",
		"application_software", "Application Software", "network", "Network", "telecom", "Telecom", "documentation", "Documentation", "other", "Other")
	problemStates = choiceList("101", "New", "102", "Assess", "103", "Root Cause Analysis", "104", "Fix in Progress", "106", "Resolved", "107", "Closed")
	ritmStates    = choiceList("-5", "Pending", "1", "Open", "2", "Work in Progress", "3", "Closed Complete", "4", "Closed Incomplete", "7", "Closed Skipped")
	ritmStages    = choiceList("waiting_for_approval", "Waiting for Approval", "request_approved", "Request Approved", "fulfillment", "Fulfillment",
		"delivery", "Delivery", "complete", "Completed", "Request Cancelled", "Request Cancelled")
	hrStates = choiceList("1", "Draft", "10", "Ready", "16", "Awaiting Approval", "18", "Work in Progress", "20", "Awaiting Acceptance",
		"24", "Suspended", "3", "Closed Complete", "4", "Closed Incomplete", "7", "Cancelled")
)

// ChangeCloseCodes returns change_request.close_code's choices.
func ChangeCloseCodes() []Choice {
	return choiceList("successful", "Successful", "successful_issues", "Successful with issues", "unsuccessful", "Unsuccessful")
}

// ProblemResolutionCodes returns problem.resolution_code's choices (the
// Madrid state model's).
func ProblemResolutionCodes() []Choice {
	return choiceList("fix_applied", "Fix Applied", "risk_accepted", "Risk Accepted", "duplicate", "Duplicate", "canceled", "Canceled")
}

// ticketTables are the simulated ticket tables, incident first.
func ticketTables() []*ticketTable {
	return []*ticketTable{incidentTable(), changeRequestTable(), problemTable(), requestedItemTable(), hrCaseTable()}
}

// TicketTables lists the simulated ticket tables (extensions of task):
// incident, change_request, problem, sc_req_item, sn_hr_core_case.
func TicketTables() []string {
	var out []string
	for _, tt := range ticketTables() {
		out = append(out, tt.name)
	}
	return out
}

// incidentTable: the shared facts file (../shared/servicenow-facts.md,
// "Incident") is the source.
func incidentTable() *ticketTable {
	return &ticketTable{
		name: "incident", label: "Incident", prefix: "INC", read: accessITIL,
		state: stateChoices, priority: prioLabels, closeNotesLabel: "Resolution notes",
		fields: []*field{
			{name: "caller_id", label: "Caller", typ: typeReference, ref: "sys_user", maxLen: 32},
			{name: "category", label: "Category", typ: typeChoice, choices: categories},
			{name: "subcategory", label: "Subcategory"},
			{name: "close_code", label: "Resolution code", typ: typeChoice, choices: CurrentCloseCodes(), strict: true},
			{name: "incident_state", label: "Incident state", typ: typeChoice, choices: stateChoices, numeric: true},
			{name: "hold_reason", label: "On hold reason", typ: typeChoice, choices: holdReasons, numeric: true},
			{name: "resolved_by", label: "Resolved by", typ: typeReference, ref: "sys_user", maxLen: 32},
			{name: "resolved_at", label: "Resolved", typ: typeDateTime},
			{name: "severity", label: "Severity", typ: typeChoice, choices: severities, numeric: true},
			{name: "reopen_count", label: "Reopen count", typ: typeInteger},
		},
		defaults:       map[string]string{"state": "1", "impact": "3", "urgency": "3", "reopen_count": "0", "severity": "3"},
		priorityMatrix: true, mirror: "incident_state",
		inactive: []string{"7", "8"}, resolvedState: "6", closedStates: []string{"7"},
		policies: []dataPolicy{{states: []string{"6", "7"}, required: []string{"close_code", "close_notes"}}},
	}
}

// changeRequestTable. States: ServiceNow docs, "State model and
// transitions" (c_ChangeStateModel); close code choices and the close
// needing close_code and close_notes: "Get and update change request
// details in Azure DevOps pipeline" and ansible-collections/servicenow.itsm
// plugins/modules/change_request.py; priority and risk choices:
// plugins/module_utils/change_request.py. URLs in docs/servicenow-tables.md.
func changeRequestTable() *ticketTable {
	return &ticketTable{
		name: "change_request", label: "Change Request", prefix: "CHG", read: accessITIL,
		state: changeStates, priority: changePriorities, closeNotesLabel: "Close notes",
		fields: []*field{
			{name: "type", label: "Type", typ: typeChoice, choices: changeTypes},
			{name: "category", label: "Category", typ: typeChoice, choices: changeCategories},
			{name: "risk", label: "Risk", typ: typeChoice, choices: changeRisks, numeric: true},
			{name: "requested_by", label: "Requested by", typ: typeReference, ref: "sys_user", maxLen: 32},
			{name: "start_date", label: "Planned start date", typ: typeDateTime},
			{name: "end_date", label: "Planned end date", typ: typeDateTime},
			{name: "close_code", label: "Close code", typ: typeChoice, choices: ChangeCloseCodes(), strict: true},
			{name: "on_hold", label: "On hold", typ: typeBoolean},
			{name: "on_hold_reason", label: "On hold reason", maxLen: 4000},
		},
		defaults: map[string]string{"state": "-5", "impact": "3", "urgency": "3", "priority": "4", "type": "normal", "category": "other", "on_hold": "false"},
		inactive: []string{"3", "4"}, closedStates: []string{"3", "4"},
		policies: []dataPolicy{{states: []string{"3"}, required: []string{"close_code", "close_notes"}}},
	}
}

// problemTable. States (Madrid state model): ansible-collections/
// servicenow.itsm plugins/module_utils/problem.py and ServiceNow docs "Life
// cycle of a problem"; the resolve/close policy by resolution code:
// plugins/modules/problem.py (validate_params, after the Madrid data
// policies); priority lookup: ServiceNow docs "Data lookup for prioritizing
// problems". URLs in docs/servicenow-tables.md.
func problemTable() *ticketTable {
	return &ticketTable{
		name: "problem", label: "Problem", prefix: "PRB", read: accessITIL,
		state: problemStates, priority: prioLabels, closeNotesLabel: "Close notes",
		fields: []*field{
			{name: "problem_state", label: "Problem state", typ: typeChoice, choices: problemStates, numeric: true},
			{name: "resolution_code", label: "Resolution code", typ: typeChoice, choices: ProblemResolutionCodes(), strict: true},
			{name: "cause_notes", label: "Cause notes", maxLen: 4000},
			{name: "fix_notes", label: "Fix notes", maxLen: 4000},
			{name: "workaround", label: "Workaround", maxLen: 4000},
			{name: "known_error", label: "Known error", typ: typeBoolean},
			{name: "duplicate_of", label: "Duplicate of", typ: typeReference, ref: "problem", maxLen: 32},
			{name: "resolved_by", label: "Resolved by", typ: typeReference, ref: "sys_user", maxLen: 32},
			{name: "resolved_at", label: "Resolved", typ: typeDateTime},
			{name: "related_incidents", label: "Related Incidents", typ: typeInteger},
			{name: "reopen_count", label: "Reopen count", typ: typeInteger},
		},
		defaults:       map[string]string{"state": "101", "impact": "3", "urgency": "3", "known_error": "false", "related_incidents": "0", "reopen_count": "0"},
		priorityMatrix: true, mirror: "problem_state",
		inactive: []string{"107"}, resolvedState: "106", closedStates: []string{"107"},
		policies: []dataPolicy{{
			states: []string{"106", "107"}, required: []string{"resolution_code"}, dependsOn: "resolution_code",
			byValue: map[string][]string{
				"fix_applied":   {"cause_notes", "fix_notes"},
				"risk_accepted": {"cause_notes", "close_notes"},
				"canceled":      {"close_notes"},
				"duplicate":     {"duplicate_of"},
			},
		}},
	}
}

// requestedItemTable. States and closed states 3, 4, 7: ServiceNow docs
// "TaskStateUtil" and "State closure in the request fulfillment execution
// plan"; stage values as scripts against instances use them (unverified as
// a complete list). URLs in docs/servicenow-tables.md.
func requestedItemTable() *ticketTable {
	return &ticketTable{
		name: "sc_req_item", label: "Requested Item", prefix: "RITM", read: accessITIL,
		state: ritmStates, priority: prioLabels, closeNotesLabel: "Close notes",
		fields: []*field{
			{name: "request", label: "Request", typ: typeReference, ref: "sc_request", maxLen: 32},
			{name: "cat_item", label: "Item", typ: typeReference, ref: "sc_cat_item", maxLen: 32},
			{name: "requested_for", label: "Requested for", typ: typeReference, ref: "sys_user", maxLen: 32},
			{name: "quantity", label: "Quantity", typ: typeInteger},
			{name: "stage", label: "Stage", typ: typeChoice, choices: ritmStages},
		},
		defaults: map[string]string{"state": "1", "impact": "3", "urgency": "3", "priority": "4", "quantity": "1"},
		inactive: []string{"3", "4", "7"}, closedStates: []string{"3", "4", "7"},
	}
}

// hrCaseTable. Labels, HRC prefix, Draft as the default and the case_writer
// role: ServiceNow docs "Work an HR case"; case_reader: "View HR case
// information"; Draft = 1 from the HR scope's hr_Case script; 10, 16, 18, 20
// and 24 are unverified (docs/servicenow-tables.md).
func hrCaseTable() *ticketTable {
	return &ticketTable{
		name: "sn_hr_core_case", label: "HR Case", prefix: "HRC", read: accessHR,
		state: hrStates, priority: prioLabels, closeNotesLabel: "Close notes",
		fields: []*field{
			{name: "opened_for", label: "Opened for", typ: typeReference, ref: "sys_user", maxLen: 32},
			{name: "subject_person", label: "Subject person", typ: typeReference, ref: "sys_user", maxLen: 32},
			{name: "hr_service", label: "HR service", typ: typeReference, ref: "sn_hr_core_service", maxLen: 32},
		},
		defaults: map[string]string{"state": "1", "impact": "3", "urgency": "3", "priority": "4"},
		inactive: []string{"3", "4", "7"}, closedStates: []string{"3", "4", "7"},
	}
}

// taskFields are the fields a ticket table inherits from task, in the order
// a dictionary read lists them.
func taskFields(tt *ticketTable) []*field {
	task := func(f *field) *field { f.definedOn = "task"; return f }
	fs := sysFields("task")
	return append(fs,
		task(&field{name: "sys_class_name", label: "Task type", maxLen: 80}),
		task(&field{name: "sys_domain", label: "Domain", typ: typeReference, ref: "sys_user_group", maxLen: 32}),
		task(&field{name: "number", label: "Number"}),
		task(&field{name: "short_description", label: "Short description", maxLen: 160}),
		task(&field{name: "description", label: "Description", maxLen: 4000}),
		task(&field{name: "state", label: "State", typ: typeChoice, choices: tt.state, numeric: true}),
		task(&field{name: "impact", label: "Impact", typ: typeChoice, choices: impactLabels, numeric: true}),
		task(&field{name: "urgency", label: "Urgency", typ: typeChoice, choices: impactLabels, numeric: true}),
		task(&field{name: "priority", label: "Priority", typ: typeChoice, choices: tt.priority, numeric: true}),
		task(&field{name: "active", label: "Active", typ: typeBoolean}),
		task(&field{name: "assigned_to", label: "Assigned to", typ: typeReference, ref: "sys_user", maxLen: 32}),
		task(&field{name: "assignment_group", label: "Assignment group", typ: typeReference, ref: "sys_user_group", maxLen: 32}),
		task(&field{name: "opened_by", label: "Opened by", typ: typeReference, ref: "sys_user", maxLen: 32}),
		task(&field{name: "opened_at", label: "Opened", typ: typeDateTime}),
		task(&field{name: "closed_by", label: "Closed by", typ: typeReference, ref: "sys_user", maxLen: 32}),
		task(&field{name: "closed_at", label: "Closed", typ: typeDateTime}),
		task(&field{name: "close_notes", label: tt.closeNotesLabel, maxLen: 4000}),
		task(&field{name: "contact_type", label: "Channel", typ: typeChoice, choices: contactTypes}),
		task(&field{name: "comments", label: "Additional comments", typ: typeJournal, maxLen: 4000}),
		task(&field{name: "work_notes", label: "Work notes", typ: typeJournal, maxLen: 4000}),
		task(&field{name: "correlation_id", label: "Correlation ID", maxLen: 100}),
		task(&field{name: "correlation_display", label: "Correlation display", maxLen: 100}),
		task(&field{name: "escalation", label: "Escalation", typ: typeInteger}),
		task(&field{name: "reassignment_count", label: "Reassignment count", typ: typeInteger}),
		task(&field{name: "due_date", label: "Due date", typ: typeDateTime}),
	)
}

// schema builds the table's schema: task's fields, then its own.
func (tt *ticketTable) schema() *tableSchema {
	fs := taskFields(tt)
	for _, f := range tt.fields {
		f.definedOn = tt.name
		fs = append(fs, f)
	}
	t := newSchema(tt.name, tt.label, "task", "number", fs)
	t.prefix = tt.prefix
	t.read = tt.read
	t.rules = tt
	return t
}

// taskDefaults are what an insert into any task table fills when empty.
var taskDefaults = map[string]string{"active": "true", "escalation": "0", "reassignment_count": "0", "sys_domain": "global"}

// applyRules is a ticket table's business logic on one write: defaults and
// the number on insert, the derived fields, the data policy and the state
// stamps. The caller holds s.mu.
func (s *Server) applyRules(t *table, old, cur *row, user, now string) error {
	tt := t.s.rules
	get := func(n string) string { return t.get(n, cur) }
	set := func(n, v string) {
		if i := t.s.idx(n); i >= 0 {
			cur.vals[i] = v
		}
	}
	if old == nil {
		for _, d := range []map[string]string{taskDefaults, tt.defaults} {
			for n, v := range d {
				if get(n) == "" {
					set(n, v)
				}
			}
		}
		if get("opened_at") == "" {
			set("opened_at", now)
		}
		if get("opened_by") == "" {
			set("opened_by", s.userID(user))
		}
		if get("number") == "" {
			set("number", fmt.Sprintf("%s%07d", tt.prefix, t.next))
			t.next++
		}
	}
	if tt.priorityMatrix {
		// Priority is computed: a value sent for it is overwritten.
		p, ok := priorityMatrix[[2]string{get("impact"), get("urgency")}]
		if !ok {
			p = "5"
		}
		set("priority", p)
	}
	state := get("state")
	if tt.mirror != "" {
		set(tt.mirror, state)
	}
	// The data policy judges the record as the write leaves it.
	for _, p := range tt.policies {
		if missing := p.missing(t, cur); len(missing) > 0 {
			return &apiError{403, "Operation Failed", "Data Policy Exception: \n\tThe following fields are mandatory: " + strings.Join(missing, ", ")}
		}
	}
	oldState := ""
	if old != nil {
		oldState = t.get("state", old)
	}
	if tt.resolvedState != "" && state == tt.resolvedState && oldState != state && get("resolved_at") == "" {
		set("resolved_at", now)
		set("resolved_by", s.userID(user))
	}
	if slices.Contains(tt.closedStates, state) && oldState != state && get("closed_at") == "" {
		set("closed_at", now)
		set("closed_by", s.userID(user))
	}
	set("active", fmt.Sprint(!slices.Contains(tt.inactive, state)))
	return nil
}
