package servicenow

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/nowbridge/nowbridge/internal/events"
)

// UpdateSetName is the name the update set shows under Retrieved Update Sets.
const UpdateSetName = "nowbridge webhooks"

// UpdateSetVersion is bumped when the shipped records change in a way an
// admin should notice; it is part of the update set's name and description.
const UpdateSetVersion = "1.3.0"

// stamp is every record's created/updated time: fixed, so regenerating from
// unchanged sources gives byte-identical XML.
const stamp = "2026-11-29 00:00:00"

// ConditionScript is the condition of every shipped business rule. It names
// the include as global.NowbridgeWebhook so that the same condition works in
// a rule of a scoped application (HR cases).
const ConditionScript = "new global.NowbridgeWebhook().shouldSend(current)"

// AttachmentConditionScript is the condition of the attachment rule on
// sys_attachment: an attachment of a table nowbridge.tables lists.
const AttachmentConditionScript = "new global.NowbridgeWebhook().shouldSendAttachment(current)"

// Options selects what the update set contains.
type Options struct {
	// Tables get a nowbridge.fields.<table> property each, and those in the
	// global scope (TableScope) one insert/update and one delete business
	// rule each; a scoped table's rules are created by hand in its scope
	// (docs/servicenow-setup.md). Default: ShippedTables.
	Tables []string
}

// Property is one system property the update set creates.
type Property struct {
	Name        string
	Type        string // string, password2, integer, boolean
	Value       string
	Description string
	Roles       string // read and write roles; "" for the platform default
}

// Rule is one business rule the update set creates.
type Rule struct {
	Name    string
	Table   string
	Scope   string // application scope the rule must be created in (TableScope)
	File    string // script under business_rules/
	Insert  bool
	Update  bool
	Delete  bool
	Comment string
	// Condition is the rule's condition; "" is ConditionScript.
	Condition string
}

// AttachmentRule is the business rule on sys_attachment: after insert and
// after delete, it sends the attachments of every synced table (the
// metadata, never the file). One rule, in the global scope, whatever the
// tables.
func AttachmentRule() Rule {
	return Rule{Name: "nowbridge webhook (attachment)", Table: AttachmentTable, Scope: "global", File: "webhook_attachment.js",
		Insert: true, Delete: true, Condition: AttachmentConditionScript,
		Comment: "Sends each attachment added to or removed from a record of a table nowbridge.tables lists to nowbridge: its metadata (content_type, file_name, hash, size_bytes, table_name, table_sys_id), never the file (after rule; the request goes out through executeAsync)."}
}

// AttachmentTable is the table attachments' metadata lives in.
const AttachmentTable = "sys_attachment"

// AttachmentFields mirrors NowbridgeWebhook.ATTACHMENT_FIELDS: the fields
// of sys_attachment the attachment rule sends in record, sorted.
func AttachmentFields() []string {
	return []string{"content_type", "file_name", "hash", "size_bytes", "table_name", "table_sys_id"}
}

// Properties lists the system properties for the given tables.
func Properties(tables []string) []Property {
	props := []Property{
		{Name: "nowbridge.webhook_url", Type: "string", Description: "URL of the nowbridge receiver, e.g. https://bridge.example.com/webhooks/servicenow. Empty: no webhook is sent (an error is logged)."},
		{Name: "nowbridge.webhook_secret", Type: "password2", Roles: "admin", Description: "Standard Webhooks signing secret, whsec_<base64>: one of the bridge's BRIDGE_WEBHOOK_SECRETS. During a rotation, list the new and the old secret comma-separated: each signs. Never logged."},
		{Name: "nowbridge.http_timeout_ms", Type: "integer", Value: "10000", Description: "Timeout of the webhook request in milliseconds (RESTMessageV2.setHttpTimeout)."},
		{Name: "nowbridge.response_wait_seconds", Type: "integer", Value: "0", Description: "0: send and do not wait (failures show in the outbound HTTP log; the bridge's reconcile recovers them). N > 0: wait up to N seconds for the bridge's answer and log failures with their HTTP status to the system log; the saving transaction waits that long at most."},
		{Name: "nowbridge.skip_user", Type: "string", Description: "Optional user name (the bridge's integration user) whose changes are not sent. Saves traffic; the bridge already suppresses its own echoes, and skipping hides integration writes from the bridge's other listeners and from reconcile's webhook path."},
		{Name: "nowbridge.enabled", Type: "boolean", Value: "true", Description: "false stops every nowbridge webhook."},
		{Name: "nowbridge.ascii_json", Type: "boolean", Value: "false", Description: "true sends every non-ASCII character as a \\uXXXX escape, so the signed bytes do not depend on the charset GlideCertificateEncryption.generateMac or the outbound request use. Set it when the self-test (bridge doctor --instance-selftest) reports a charset mismatch."},
		{Name: "nowbridge.tables", Type: "string", Value: DefaultSyncedTables, Description: "Comma-separated tables whose changes the business rules send: the bridge's BRIDGE_TABLES (e.g. incident,change_request). A table's rules send nothing while it is not listed; empty means " + DefaultSyncedTables + "."},
	}
	for _, t := range tables {
		props = append(props, Property{
			Name: "nowbridge.fields." + t, Type: "string", Value: DefaultFields(t),
			Description: "Comma-separated fields of " + t + " sent in each webhook's record (journal fields send the entry the change added). Must cover every field the bridge's mapping uses; empty takes the script's default list for the table.",
		})
	}
	return props
}

// Rules lists the business rules for the given tables.
func Rules(tables []string) []Rule {
	var rules []Rule
	for _, t := range tables {
		scope := TableScope(t)
		rules = append(rules,
			Rule{Name: "nowbridge webhook (insert/update)", Table: t, Scope: scope, File: "webhook_insert_update.js", Insert: true, Update: true,
				Comment: "Sends each insert and update of " + t + " to nowbridge while nowbridge.tables lists it (after rule; the request goes out through executeAsync)."},
			Rule{Name: "nowbridge webhook (delete)", Table: t, Scope: scope, File: "webhook_delete.js", Delete: true,
				Comment: "Sends each delete of " + t + " to nowbridge with the record's last values while nowbridge.tables lists it."},
		)
	}
	return append(rules, AttachmentRule())
}

// sysID derives a stable sys_id from a record's identity, so re-importing a
// newer update set updates the same records instead of adding copies.
func sysID(parts ...string) string {
	h := sha256.Sum256([]byte("nowbridge:" + strings.Join(parts, ":")))
	return hex.EncodeToString(h[:16])
}

var xmlText = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")

type field struct{ name, value string }

// record renders <table action="INSERT_OR_UPDATE">fields</table>; a field
// whose name holds a space carries its attributes (e.g. display_value).
func record(table string, fields []field) string {
	var b strings.Builder
	b.WriteString("<" + table + ` action="INSERT_OR_UPDATE">`)
	for _, f := range fields {
		name, attrs, _ := strings.Cut(f.name, " ")
		if attrs != "" {
			attrs = " " + attrs
		}
		if f.value == "" {
			b.WriteString("<" + name + attrs + "/>")
			continue
		}
		b.WriteString("<" + name + attrs + ">" + xmlText.Replace(f.value) + "</" + name + ">")
	}
	b.WriteString("</" + table + ">")
	return b.String()
}

func boolStr(v bool) string {
	if v {
		return "true"
	}
	return "false"
}

type update struct {
	table, sysID, target, typ, payload string
	collection                         string // the table a business rule runs on
}

// BuildUpdateSet renders the update set XML (an <unload> with one
// sys_remote_update_set and one sys_update_xml per record) from the embedded
// scripts. The output depends only on the sources and opt.
func BuildUpdateSet(opt Options) ([]byte, error) {
	tables := opt.Tables
	if len(tables) == 0 {
		tables = ShippedTables()
	}
	for _, t := range tables {
		if !events.ValidTable(t) {
			return nil, fmt.Errorf("table %q is not a ServiceNow table name", t)
		}
	}
	include, err := includeUpdate()
	if err != nil {
		return nil, err
	}
	rules, ruleTables, err := ruleUpdates(tables)
	if err != nil {
		return nil, err
	}
	st, err := selfTestUpdates()
	if err != nil {
		return nil, err
	}
	updates := append([]update{include}, rules...)
	updates = append(updates, propertyUpdates(tables)...)
	updates = append(updates, st...)
	return unload(describe(ruleTables, tables), updates), nil
}

// globalRecordFields are the fields every shipped record of the global
// scope carries after its own.
func globalRecordFields(table, id, name string) []field {
	return []field{
		{"sys_class_name", table},
		{"sys_created_by", "admin"},
		{"sys_created_on", stamp},
		{"sys_id", id},
		{"sys_mod_count", "0"},
		{"sys_name", name},
		{`sys_package display_value="Global" source="global"`, "global"},
		{`sys_scope display_value="Global"`, "global"},
		{"sys_update_name", table + "_" + id},
		{"sys_updated_by", "admin"},
		{"sys_updated_on", stamp},
	}
}

// includeUpdate is the NowbridgeWebhook Script Include. It is accessible
// from all application scopes (access public): the HR scope's rules call
// it as global.NowbridgeWebhook.
func includeUpdate() (update, error) {
	include, err := Script("NowbridgeWebhook.js")
	if err != nil {
		return update{}, err
	}
	id := sysID("sys_script_include", "NowbridgeWebhook")
	fields := []field{
		{"access", "public"},
		{"active", "true"},
		{"api_name", "global.NowbridgeWebhook"},
		{"caller_access", ""},
		{"client_callable", "false"},
		{"description", "nowbridge: builds, signs (Standard Webhooks) and sends record changes to the nowbridge receiver. Accessible from all application scopes: the HR scope's business rules call it as global.NowbridgeWebhook. Generated from servicenow/business_rules/NowbridgeWebhook.js; do not edit here."},
		{"name", "NowbridgeWebhook"},
		{"script", include},
	}
	fields = append(fields, globalRecordFields("sys_script_include", id, "NowbridgeWebhook")...)
	return update{table: "sys_script_include", sysID: id, target: "NowbridgeWebhook", typ: "Script Include", payload: record("sys_script_include", fields)}, nil
}

// ruleUpdates are the business rules of the tables in the global scope;
// ruleTables lists those tables.
func ruleUpdates(tables []string) (updates []update, ruleTables []string, err error) {
	for _, r := range Rules(tables) {
		if r.Scope != "global" {
			continue // created by hand in its scope (docs/servicenow-setup.md)
		}
		if !slices.Contains(ruleTables, r.Table) {
			ruleTables = append(ruleTables, r.Table)
		}
		script, err := Script(r.File)
		if err != nil {
			return nil, nil, err
		}
		id := sysID("sys_script", r.Table, r.File)
		fields := []field{
			{"abort_action", "false"},
			{"access", "package_private"},
			{"action_delete", boolStr(r.Delete)},
			{"action_insert", boolStr(r.Insert)},
			{"action_query", "false"},
			{"action_update", boolStr(r.Update)},
			{"active", "true"},
			{"add_message", "false"},
			{"advanced", "true"},
			{"collection", r.Table},
			{"condition", cmp.Or(r.Condition, ConditionScript)},
			{"description", r.Comment + " Generated from servicenow/business_rules/" + r.File + "."},
			{"execute_function", "false"},
			{"filter_condition", ""},
			{"is_rest", "false"},
			{"name", r.Name},
			{"order", "10000"},
			{"priority", "100"},
			{"role_conditions", ""},
			{"script", script},
			{"sys_class_name", "sys_script"},
			{"sys_created_by", "admin"},
			{"sys_created_on", stamp},
			{"sys_domain", "global"},
			{"sys_domain_path", "/"},
			{"sys_id", id},
			{"sys_mod_count", "0"},
			{"sys_name", r.Name},
			{`sys_package display_value="Global" source="global"`, "global"},
			{`sys_scope display_value="Global"`, "global"},
			{"sys_update_name", "sys_script_" + id},
			{"sys_updated_by", "admin"},
			{"sys_updated_on", stamp},
			{"when", "after"},
		}
		updates = append(updates, update{table: "sys_script", sysID: id, target: r.Name, typ: "Business Rule", collection: r.Table, payload: record("sys_script", fields)})
	}
	return updates, ruleTables, nil
}

// propertyUpdates are the nowbridge.* system properties.
func propertyUpdates(tables []string) []update {
	var updates []update
	for _, p := range Properties(tables) {
		id := sysID("sys_properties", p.Name)
		fields := []field{
			{"choices", ""},
			{"description", p.Description},
			{"ignore_cache", "false"},
			{"is_private", "false"},
			{"name", p.Name},
			{"read_roles", p.Roles},
			{"suffix", strings.TrimPrefix(p.Name, "nowbridge.")},
		}
		fields = append(fields, globalRecordFields("sys_properties", id, p.Name)...)
		fields = append(fields, field{"type", p.Type}, field{"value", p.Value}, field{"write_roles", p.Roles})
		updates = append(updates, update{table: "sys_properties", sysID: id, target: p.Name, typ: "System Property", payload: record("sys_properties", fields)})
	}
	return updates
}

// describe is the update set's description: what it creates, and which
// tables' rules an admin creates by hand in their scope.
func describe(ruleTables, tables []string) string {
	var tablesWithRules []string
	for _, t := range ruleTables {
		if t != AttachmentTable {
			tablesWithRules = append(tablesWithRules, t)
		}
	}
	d := "nowbridge " + UpdateSetVersion + ": the NowbridgeWebhook script include, after insert/update and after delete business rules for " +
		strings.Join(tablesWithRules, ", ") + " (each sending while nowbridge.tables lists it), an after insert/delete rule on sys_attachment (attachments of the tables nowbridge.tables lists, metadata only), the nowbridge.* system properties, and the self-test (Scripted REST API nowbridge, POST /selftest, role " +
		events.SelfTestRole + ")."
	var scoped []string
	for _, t := range tables {
		if TableScope(t) != "global" {
			scoped = append(scoped, t+" ("+TableScope(t)+")")
		}
	}
	if len(scoped) > 0 {
		d += " Rules for " + strings.Join(scoped, ", ") + " are created by hand in that scope."
	}
	return d + " Generated by `go generate ./servicenow` from servicenow/business_rules; see docs/servicenow-setup.md."
}

// unload writes the <unload> document: the remote update set, then one
// sys_update_xml per record.
func unload(description string, updates []update) []byte {
	setID := sysID("sys_remote_update_set", UpdateSetName)
	var b bytes.Buffer
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	b.WriteString(`<unload unload_date="` + stamp + `">` + "\n")
	b.WriteString(record("sys_remote_update_set", []field{
		{`application display_value="Global"`, "global"},
		{"application_name", "Global"},
		{"application_scope", "global"},
		{"application_version", ""},
		{"collisions", ""},
		{"commit_date", ""},
		{"deleted", ""},
		{"description", description},
		{"inserted", ""},
		{"name", UpdateSetName + " " + UpdateSetVersion},
		{"origin_sys_id", ""},
		{"parent", ""},
		{"release_date", ""},
		{"remote_base_update_set", ""},
		{"remote_parent_id", ""},
		{"remote_sys_id", setID},
		{"state", "loaded"},
		{"summary", ""},
		{"sys_class_name", "sys_remote_update_set"},
		{"sys_created_by", "admin"},
		{"sys_created_on", stamp},
		{"sys_id", setID},
		{"sys_mod_count", "0"},
		{"sys_updated_by", "admin"},
		{"sys_updated_on", stamp},
		{"update_set", ""},
		{"update_source", ""},
		{"updated", ""},
	}))
	b.WriteString("\n")
	for _, u := range updates {
		payload := `<?xml version="1.0" encoding="UTF-8"?><record_update table="` + u.table + `">` + u.payload + `</record_update>`
		b.WriteString(record("sys_update_xml", []field{
			{"action", "INSERT_OR_UPDATE"},
			{`application display_value="Global"`, "global"},
			{"category", "customer"},
			{"comments", ""},
			{"name", u.table + "_" + u.sysID},
			{"payload", payload},
			{`remote_update_set display_value="` + UpdateSetName + " " + UpdateSetVersion + `"`, setID},
			{"replace_on_upgrade", "false"},
			{"sys_created_by", "admin"},
			{"sys_created_on", stamp},
			{"sys_id", sysID("sys_update_xml", u.table, u.sysID)},
			{"sys_mod_count", "0"},
			{"sys_updated_by", "admin"},
			{"sys_updated_on", stamp},
			{"table", u.collection},
			{"target_name", u.target},
			{"type", u.typ},
			{"update_domain", "global"},
			{"update_guid", ""},
			{"update_guid_history", ""},
			{"update_set", ""},
			{"view", ""},
		}))
		b.WriteString("\n")
	}
	b.WriteString("</unload>\n")
	return b.Bytes()
}

// SelfTestOperationPath is the self-test resource's path in the shipped
// update set (the instance may show another namespace; see docs).
var SelfTestOperationPath = events.SelfTestPath(events.SelfTestNamespace)

// selfTestUpdates are the self-test's records: the role, a REST endpoint
// ACL requiring it, the Scripted REST API and its one resource. The
// resource requires authentication and the ACL, so only a user holding
// nowbridge_integration (the integration user) can make the instance send
// its test event.
func selfTestUpdates() ([]update, error) {
	script, err := RESTScript("selftest.js")
	if err != nil {
		return nil, err
	}
	return append(selfTestAccessUpdates(), selfTestAPIUpdates(script)...), nil
}

// Identities of the self-test's records.
var (
	selfTestACLName = "nowbridge self-test"
	selfTestACLID   = sysID("sys_security_acl", selfTestACLName)
	selfTestAPIName = "nowbridge"
	selfTestAPIID   = sysID("sys_ws_definition", events.SelfTestAPIID)
)

// sortedRecord is a global-scope record's fields in name order.
func sortedRecord(fs []field, table, id, name string) []field {
	fs = append(fs, globalRecordFields(table, id, name)...)
	slices.SortStableFunc(fs, func(a, b field) int {
		an, _, _ := strings.Cut(a.name, " ")
		bn, _, _ := strings.Cut(b.name, " ")
		return strings.Compare(an, bn)
	})
	return fs
}

// selfTestAccessUpdates are the role, the REST endpoint ACL and the ACL's
// role.
func selfTestAccessUpdates() []update {
	role := events.SelfTestRole
	roleID := sysID("sys_user_role", role)
	aclName, aclID := selfTestACLName, selfTestACLID
	aclRoleID := sysID("sys_security_acl_role", aclName, role)
	base := events.SelfTestBasePath(events.SelfTestNamespace)
	return []update{
		{table: "sys_user_role", sysID: roleID, target: role, typ: "Role", payload: record("sys_user_role", sortedRecord([]field{
			{"assignable_by", ""},
			{"can_delegate", "true"},
			{"description", "nowbridge: may run the instance self-test (POST " + base + events.SelfTestResource + "). Grant it to the OAuth Application User of the bridge."},
			{"elevated_privilege", "false"},
			{"grantable", "true"},
			{"includes_roles", ""},
			{"name", role},
			{"suffix", role},
		}, "sys_user_role", roleID, role))},
		{table: "sys_security_acl", sysID: aclID, target: aclName, typ: "Access Control", payload: record("sys_security_acl", sortedRecord([]field{
			{"active", "true"},
			{"admin_overrides", "true"},
			{"advanced", "false"},
			{"condition", ""},
			{"decision_type", "allow"},
			{"description", "nowbridge: only " + role + " may call the self-test resource of the Scripted REST API nowbridge."},
			{"name", aclName},
			{"operation", "execute"},
			{"script", ""},
			{"type", "rest_endpoint"},
		}, "sys_security_acl", aclID, aclName))},
		{table: "sys_security_acl_role", sysID: aclRoleID, target: aclName + " / " + role, typ: "Access Roles", payload: record("sys_security_acl_role", sortedRecord([]field{
			{`sys_security_acl display_value="` + aclName + `"`, aclID},
			{`sys_user_role display_value="` + role + `"`, roleID},
		}, "sys_security_acl_role", aclRoleID, aclName+" / "+role))},
	}
}

// selfTestAPIUpdates are the Scripted REST API and its one resource.
func selfTestAPIUpdates(script string) []update {
	aclName, aclID := selfTestACLName, selfTestACLID
	apiName, apiID := selfTestAPIName, selfTestAPIID
	opID := sysID("sys_ws_operation", events.SelfTestAPIID, events.SelfTestResource)
	base := events.SelfTestBasePath(events.SelfTestNamespace)
	return []update{
		{table: "sys_ws_definition", sysID: apiID, target: apiName, typ: "Scripted REST API", payload: record("sys_ws_definition", sortedRecord([]field{
			{"active", "true"},
			{"base_uri", base},
			{"consumes", "application/json"},
			{"consumes_customized", "false"},
			{"default_operation_uri", ""},
			{"doc_link", "docs/servicenow-setup.md in the nowbridge repository"},
			{`enforce_acl display_value="` + aclName + `"`, aclID},
			{"is_versioned", "false"},
			{"name", apiName},
			{"namespace", events.SelfTestNamespace},
			{"produces", "application/json"},
			{"produces_customized", "false"},
			{"requires_acl_authorization", "true"},
			{"requires_authentication", "true"},
			{"requires_snc_internal_role", "true"},
			{"service_id", events.SelfTestAPIID},
			{"short_description", "nowbridge: the instance self-test (sends a signed test event to the bridge)."},
		}, "sys_ws_definition", apiID, apiName))},
		{table: "sys_ws_operation", sysID: opID, target: "selftest", typ: "Scripted REST Resource", payload: record("sys_ws_operation", sortedRecord([]field{
			{"active", "true"},
			{"consumes", "application/json"},
			{"consumes_customized", "false"},
			{`enforce_acl display_value="` + aclName + `"`, aclID},
			{"http_method", "POST"},
			{"name", "selftest"},
			{"operation_script", script},
			{"operation_uri", base + events.SelfTestResource},
			{"produces", "application/json"},
			{"produces_customized", "false"},
			{"relative_path", events.SelfTestResource},
			{"request_example", ""},
			{"requires_acl_authorization", "true"},
			{"requires_authentication", "true"},
			{"requires_snc_internal_role", "true"},
			{"short_description", "Signs a test event with NowbridgeWebhook and nowbridge.webhook_secret, posts it to nowbridge.webhook_url and returns the bridge's answer. Generated from servicenow/rest_api/selftest.js."},
			{`web_service_definition display_value="` + apiName + `"`, apiID},
			{"web_service_version", ""},
		}, "sys_ws_operation", opID, "selftest"))},
	}
}
