package servicenow

import (
	"slices"
	"strings"
)

// shippedTables are the tables nowbridge ships mappings, business rules and
// default field lists for, in the order the update set lists them.
var shippedTables = []string{"incident", "change_request", "problem", "sc_req_item", "sn_hr_core_case"}

// ShippedTables returns the tables nowbridge ships business rules and
// default field lists for: incident, change_request, problem, sc_req_item
// and sn_hr_core_case.
func ShippedTables() []string { return slices.Clone(shippedTables) }

// DefaultIncidentFields mirrors NowbridgeWebhook.DEFAULT_FIELDS.incident.
const DefaultIncidentFields = "number,short_description,description,state,priority,urgency,impact,correlation_id,correlation_display," +
	"close_code,close_notes,active,comments,work_notes"

// defaultFields mirrors NowbridgeWebhook.DEFAULT_FIELDS (a contract test
// compares the two): per table, what a webhook's record holds while
// nowbridge.fields.<table> is empty. Each list covers the fields the
// table's shipped mapping uses, the close fields its data policy needs,
// number and active.
var defaultFields = map[string]string{
	"incident": DefaultIncidentFields,
	"change_request": "number,short_description,description,state,priority,urgency,impact,risk,type,category,start_date,end_date," +
		"correlation_id,correlation_display,close_code,close_notes,active,comments,work_notes",
	"problem": "number,short_description,description,state,priority,urgency,impact,correlation_id,correlation_display," +
		"resolution_code,cause_notes,fix_notes,close_notes,duplicate_of,workaround,active,comments,work_notes",
	"sc_req_item": "number,short_description,description,state,stage,priority,urgency,impact,quantity,requested_for,due_date," +
		"correlation_id,correlation_display,close_notes,active,comments,work_notes",
	"sn_hr_core_case": "number,short_description,description,state,priority,opened_for,subject_person," +
		"correlation_id,correlation_display,close_notes,active,comments,work_notes",
}

// DefaultFields returns the fields the business rules send for table when
// nowbridge.fields.<table> is empty, comma-separated; "" for a table
// without a default (its property must then be set).
func DefaultFields(table string) string { return defaultFields[table] }

// DefaultFieldList is DefaultFields as a list (nil for no default).
func DefaultFieldList(table string) []string {
	if v := defaultFields[table]; v != "" {
		return strings.Split(v, ",")
	}
	return nil
}

// DefaultSyncedTables is nowbridge.tables' shipped value: the tables whose
// rules send webhooks until an admin lists more (the bridge's
// BRIDGE_TABLES default). Incident only, so that importing a newer update
// set never starts sending tables an installation does not sync.
const DefaultSyncedTables = "incident"

// TableScope is the application scope a table's business rules must be
// created in. ServiceNow allows a rule in another scope than its table's
// only as an async rule or a before rule without a script (see
// docs/servicenow-tables.md), and the webhook rules are after rules with a
// script: a table of a scoped application needs its rules in that scope,
// which an update set of the global scope cannot hold. Scoped
// applications' tables are named after their scope (sn_hr_core_case in
// sn_hr_core, x_acme_app_ticket in x_acme_app): a name starting sn_ or x_ is
// taken as scoped, its scope the name without its last part; every other
// table (incident, u_custom) is global. The table's Application field on
// the instance is authoritative.
func TableScope(table string) string {
	if !strings.HasPrefix(table, "sn_") && !strings.HasPrefix(table, "x_") {
		return "global"
	}
	if i := strings.LastIndexByte(table, '_'); i > 2 {
		return table[:i]
	}
	return table
}
