package servicenow_test

import (
	"bytes"
	"encoding/xml"
	"flag"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/servicenow"
)

var updateXML = flag.Bool("update", false, "rewrite update_set/nowbridge.xml from the scripts")

const updateSetFile = "update_set/nowbridge.xml"

// TestUpdateSet_CommittedMatchesSources fails when a script changed and the
// committed update set was not regenerated.
func TestUpdateSet_CommittedMatchesSources(t *testing.T) {
	want, err := servicenow.BuildUpdateSet(servicenow.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if *updateXML {
		if err := os.WriteFile(updateSetFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(updateSetFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is out of date with servicenow/business_rules: regenerate it with `go generate ./servicenow` "+
			"(or `go test ./servicenow -run TestUpdateSet -update`) and commit the result", updateSetFile)
	}
}

type unload struct {
	XMLName xml.Name `xml:"unload"`
	Sets    []struct {
		Name        string `xml:"name"`
		SysID       string `xml:"sys_id"`
		State       string `xml:"state"`
		Description string `xml:"description"`
	} `xml:"sys_remote_update_set"`
	Updates []struct {
		Name      string `xml:"name"`
		Type      string `xml:"type"`
		Target    string `xml:"target_name"`
		RemoteSet string `xml:"remote_update_set"`
		Payload   string `xml:"payload"`
	} `xml:"sys_update_xml"`
}

type recordUpdate struct {
	Table   string `xml:"table,attr"`
	Include *struct {
		Name   string `xml:"name"`
		API    string `xml:"api_name"`
		Script string `xml:"script"`
		Active string `xml:"active"`
		Access string `xml:"access"`
	} `xml:"sys_script_include"`
	Rule *struct {
		Name       string `xml:"name"`
		Collection string `xml:"collection"`
		When       string `xml:"when"`
		Insert     string `xml:"action_insert"`
		Update     string `xml:"action_update"`
		Delete     string `xml:"action_delete"`
		Condition  string `xml:"condition"`
		Script     string `xml:"script"`
		Advanced   string `xml:"advanced"`
		Active     string `xml:"active"`
		Scope      string `xml:"sys_scope"`
	} `xml:"sys_script"`
	Property *struct {
		Name  string `xml:"name"`
		Type  string `xml:"type"`
		Value string `xml:"value"`
	} `xml:"sys_properties"`
	Role *struct {
		SysID string `xml:"sys_id"`
		Name  string `xml:"name"`
	} `xml:"sys_user_role"`
	ACL *struct {
		SysID     string `xml:"sys_id"`
		Type      string `xml:"type"`
		Operation string `xml:"operation"`
		Active    string `xml:"active"`
	} `xml:"sys_security_acl"`
	ACLRole *struct {
		ACL  string `xml:"sys_security_acl"`
		Role string `xml:"sys_user_role"`
	} `xml:"sys_security_acl_role"`
	API *struct {
		SysID      string `xml:"sys_id"`
		ServiceID  string `xml:"service_id"`
		Namespace  string `xml:"namespace"`
		BaseURI    string `xml:"base_uri"`
		EnforceACL string `xml:"enforce_acl"`
		Auth       string `xml:"requires_authentication"`
		ACLAuth    string `xml:"requires_acl_authorization"`
		Active     string `xml:"active"`
	} `xml:"sys_ws_definition"`
	Operation *struct {
		Method     string `xml:"http_method"`
		Relative   string `xml:"relative_path"`
		URI        string `xml:"operation_uri"`
		Script     string `xml:"operation_script"`
		Definition string `xml:"web_service_definition"`
		EnforceACL string `xml:"enforce_acl"`
		Auth       string `xml:"requires_authentication"`
		ACLAuth    string `xml:"requires_acl_authorization"`
		Active     string `xml:"active"`
	} `xml:"sys_ws_operation"`
}

// selfTestRecords checks the self-test's records as a whole: the resource
// runs the shipped script, belongs to the API, and both require
// authentication and the ACL that requires the role.
type selfTestRecords struct {
	roles, acls, aclRoles, apis, ops int
	roleID, aclID, apiID             string
	aclRole                          [2]string
	apiACL, opACL, opDef             string
}

func (st *selfTestRecords) add(t *testing.T, rec recordUpdate) bool {
	t.Helper()
	resource, _ := servicenow.RESTScript("selftest.js")
	switch {
	case rec.Role != nil:
		st.roles++
		st.roleID = rec.Role.SysID
		if rec.Role.Name != events.SelfTestRole {
			t.Errorf("role %q, want %q", rec.Role.Name, events.SelfTestRole)
		}
	case rec.ACL != nil:
		st.acls++
		st.aclID = rec.ACL.SysID
		if rec.ACL.Type != "rest_endpoint" || rec.ACL.Operation != "execute" || rec.ACL.Active != "true" {
			t.Errorf("ACL %+v, want an active rest_endpoint ACL for execute", *rec.ACL)
		}
	case rec.ACLRole != nil:
		st.aclRoles++
		st.aclRole = [2]string{rec.ACLRole.ACL, rec.ACLRole.Role}
	case rec.API != nil:
		st.apis++
		a := rec.API
		st.apiID, st.apiACL = a.SysID, a.EnforceACL
		if a.ServiceID != events.SelfTestAPIID || a.BaseURI != events.SelfTestBasePath(a.Namespace) || a.Auth != "true" || a.ACLAuth != "true" || a.Active != "true" {
			t.Errorf("Scripted REST API %+v: want API ID %s, base /api/<namespace>/%s, authentication and ACL required", *a, events.SelfTestAPIID, events.SelfTestAPIID)
		}
	case rec.Operation != nil:
		st.ops++
		o := rec.Operation
		st.opACL, st.opDef = o.EnforceACL, o.Definition
		if o.Method != "POST" || o.Relative != events.SelfTestResource || o.URI != servicenow.SelfTestOperationPath || o.Auth != "true" || o.ACLAuth != "true" || o.Active != "true" {
			t.Errorf("resource: %s %s (%s), auth %s, ACL %s: want POST %s at %s with authentication and ACL", o.Method, o.Relative, o.URI, o.Auth, o.ACLAuth, events.SelfTestResource, servicenow.SelfTestOperationPath)
		}
		if o.Script != resource {
			t.Errorf("the resource's script differs from rest_api/selftest.js")
		}
	default:
		return false
	}
	return true
}

func (st *selfTestRecords) check(t *testing.T) {
	t.Helper()
	if st.roles != 1 || st.acls != 1 || st.aclRoles != 1 || st.apis != 1 || st.ops != 1 {
		t.Fatalf("self-test records: %d roles, %d ACLs, %d ACL roles, %d APIs, %d resources; want one each", st.roles, st.acls, st.aclRoles, st.apis, st.ops)
	}
	if st.aclRole != [2]string{st.aclID, st.roleID} {
		t.Errorf("the ACL role links %v, want the ACL %s to the role %s", st.aclRole, st.aclID, st.roleID)
	}
	if st.apiACL != st.aclID || st.opACL != st.aclID {
		t.Errorf("API enforces ACL %q, resource %q; want %q", st.apiACL, st.opACL, st.aclID)
	}
	if st.opDef != st.apiID {
		t.Errorf("the resource belongs to %q, want the API %q", st.opDef, st.apiID)
	}
}

// parsedSet is what an importer reads from an update set: the rules by
// table/kind, the properties as type=value, the include's fields.
type parsedSet struct {
	rules         map[string]bool
	props         map[string]string
	includes      int
	includeAccess string
	description   string
}

// parseUpdateSet parses the update set the way an importer reads it and
// checks what holds for every table list: one remote update set, every
// record in it, the include and rules exactly as in the sources, the
// self-test's records.
func parseUpdateSet(t *testing.T, raw []byte) parsedSet {
	t.Helper()
	var u unload
	if err := xml.Unmarshal(raw, &u); err != nil {
		t.Fatalf("update set is not well-formed XML: %v", err)
	}
	if len(u.Sets) != 1 || u.Sets[0].State != "loaded" {
		t.Fatalf("want one sys_remote_update_set in state loaded, got %+v", u.Sets)
	}
	include, _ := servicenow.Script("NowbridgeWebhook.js")
	insertUpdate, _ := servicenow.Script("webhook_insert_update.js")
	deleteRule, _ := servicenow.Script("webhook_delete.js")
	attachmentRule, _ := servicenow.Script("webhook_attachment.js")

	ps := parsedSet{rules: map[string]bool{}, props: map[string]string{}, description: u.Sets[0].Description}
	var st selfTestRecords
	for _, up := range u.Updates {
		if up.RemoteSet != u.Sets[0].SysID {
			t.Errorf("%s: remote_update_set %q, want %q", up.Name, up.RemoteSet, u.Sets[0].SysID)
		}
		var rec recordUpdate
		if err := xml.Unmarshal([]byte(up.Payload), &rec); err != nil {
			t.Fatalf("%s: payload is not well-formed XML: %v", up.Name, err)
		}
		if !strings.HasPrefix(up.Name, rec.Table+"_") {
			t.Errorf("sys_update_xml name %q does not start with its table %q", up.Name, rec.Table)
		}
		if st.add(t, rec) {
			continue
		}
		switch {
		case rec.Include != nil:
			ps.includes++
			ps.includeAccess = rec.Include.Access
			if rec.Include.Script != include || rec.Include.API != "global.NowbridgeWebhook" || rec.Include.Active != "true" {
				t.Errorf("script include differs from business_rules/NowbridgeWebhook.js or is not active/global")
			}
		case rec.Rule != nil:
			r := rec.Rule
			wantCondition := servicenow.ConditionScript
			if r.Collection == servicenow.AttachmentTable {
				wantCondition = servicenow.AttachmentConditionScript
			}
			if r.When != "after" || r.Advanced != "true" || r.Active != "true" || r.Condition != wantCondition || r.Scope != "global" {
				t.Errorf("rule %s on %s: when=%s advanced=%s active=%s condition=%q scope=%q", r.Name, r.Collection, r.When, r.Advanced, r.Active, r.Condition, r.Scope)
			}
			switch {
			case r.Collection == servicenow.AttachmentTable:
				if r.Insert != "true" || r.Update != "false" || r.Delete != "true" || r.Script != attachmentRule {
					t.Errorf("attachment rule: insert=%s update=%s delete=%s, script same as webhook_attachment.js: %v; want after insert and delete only",
						r.Insert, r.Update, r.Delete, r.Script == attachmentRule)
				}
				ps.rules[r.Collection+"/insert_delete"] = true
			case r.Insert == "true" && r.Update == "true" && r.Delete == "false":
				if r.Script != insertUpdate {
					t.Errorf("insert/update rule on %s differs from webhook_insert_update.js", r.Collection)
				}
				ps.rules[r.Collection+"/insert_update"] = true
			case r.Insert == "false" && r.Update == "false" && r.Delete == "true":
				if r.Script != deleteRule {
					t.Errorf("delete rule on %s differs from webhook_delete.js", r.Collection)
				}
				ps.rules[r.Collection+"/delete"] = true
			default:
				t.Errorf("rule %s on %s has actions insert=%s update=%s delete=%s", r.Name, r.Collection, r.Insert, r.Update, r.Delete)
			}
		case rec.Property != nil:
			ps.props[rec.Property.Name] = rec.Property.Type + "=" + rec.Property.Value
		default:
			t.Errorf("%s: payload holds no known record: %s", up.Name, up.Payload)
		}
	}
	if ps.includes != 1 {
		t.Errorf("%d script includes, want 1", ps.includes)
	}
	st.check(t)
	return ps
}

// commonProps are the properties every update set holds.
var commonProps = map[string]string{
	"nowbridge.webhook_url":           "string=",
	"nowbridge.webhook_secret":        "password2=",
	"nowbridge.http_timeout_ms":       "integer=10000",
	"nowbridge.response_wait_seconds": "integer=0",
	"nowbridge.skip_user":             "string=",
	"nowbridge.enabled":               "boolean=true",
	"nowbridge.ascii_json":            "boolean=false",
	"nowbridge.tables":                "string=incident",
}

func checkProps(t *testing.T, got, extra map[string]string) {
	t.Helper()
	want := maps.Clone(commonProps)
	maps.Copy(want, extra)
	for name, w := range want {
		if got[name] != w {
			t.Errorf("property %s = %q, want %q", name, got[name], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d properties, want %d: %v", len(got), len(want), got)
	}
}

// TestUpdateSet_ShippedTables: the shipped update set has after rules for
// every shipped table of the global scope, none for HR cases (a global
// after rule with a script cannot run on a scoped table: created by hand in
// the HR scope), a nowbridge.fields property per shipped table holding the
// script's default list, nowbridge.tables = incident, and an include every
// scope may call.
func TestUpdateSet_ShippedTables(t *testing.T) {
	raw, err := servicenow.BuildUpdateSet(servicenow.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ps := parseUpdateSet(t, raw)
	extra := map[string]string{}
	var wantRules []string
	for _, table := range servicenow.ShippedTables() {
		extra["nowbridge.fields."+table] = "string=" + servicenow.DefaultFields(table)
		if servicenow.DefaultFields(table) == "" {
			t.Errorf("shipped table %s has no default field list", table)
		}
		if servicenow.TableScope(table) == "global" {
			wantRules = append(wantRules, table+"/insert_update", table+"/delete")
		}
	}
	wantRules = append(wantRules, "sys_attachment/insert_delete")
	checkProps(t, ps.props, extra)
	for _, r := range wantRules {
		if !ps.rules[r] {
			t.Errorf("missing business rule %s (have %v)", r, ps.rules)
		}
	}
	if len(ps.rules) != len(wantRules) || len(wantRules) != 9 {
		t.Errorf("rules %v, want exactly %v", ps.rules, wantRules)
	}
	if ps.rules["sn_hr_core_case/insert_update"] || ps.rules["sn_hr_core_case/delete"] {
		t.Error("the global update set holds a rule on sn_hr_core_case; it must be created in the sn_hr_core scope")
	}
	if servicenow.TableScope("sn_hr_core_case") != "sn_hr_core" {
		t.Errorf("sn_hr_core_case's scope is %q, want sn_hr_core", servicenow.TableScope("sn_hr_core_case"))
	}
	if ps.includeAccess != "public" {
		t.Errorf("the include's access is %q, want public (the HR scope's rules call global.NowbridgeWebhook)", ps.includeAccess)
	}
	if !strings.Contains(ps.description, "sn_hr_core_case (sn_hr_core) are created by hand") {
		t.Errorf("the description does not say the HR rules are created by hand: %q", ps.description)
	}
}

// TestUpdateSet_OtherTables: -tables builds rules and an empty fields
// property for a global table without a default list, and only the
// property for a table of a scoped application.
func TestUpdateSet_OtherTables(t *testing.T) {
	raw, err := servicenow.BuildUpdateSet(servicenow.Options{Tables: []string{"incident", "u_vendor_ticket", "sn_customerservice_case"}})
	if err != nil {
		t.Fatal(err)
	}
	ps := parseUpdateSet(t, raw)
	want := []string{"incident/insert_update", "incident/delete", "u_vendor_ticket/insert_update", "u_vendor_ticket/delete", "sys_attachment/insert_delete"}
	for _, r := range want {
		if !ps.rules[r] {
			t.Errorf("missing business rule %s (have %v)", r, ps.rules)
		}
	}
	if len(ps.rules) != len(want) {
		t.Errorf("rules %v, want exactly %v (none for the scoped sn_customerservice_case)", ps.rules, want)
	}
	checkProps(t, ps.props, map[string]string{
		"nowbridge.fields.incident":                "string=" + servicenow.DefaultIncidentFields,
		"nowbridge.fields.u_vendor_ticket":         "string=",
		"nowbridge.fields.sn_customerservice_case": "string=",
	})
	for table, scope := range map[string]string{"incident": "global", "u_vendor_ticket": "global", "sn_hr_core_case": "sn_hr_core",
		"sn_customerservice_case": "sn_customerservice", "x_acme_app_ticket": "x_acme_app", "sc_req_item": "global"} {
		if got := servicenow.TableScope(table); got != scope {
			t.Errorf("TableScope(%s) = %q, want %q", table, got, scope)
		}
	}
}

func TestUpdateSet_RejectsBadTable(t *testing.T) {
	if _, err := servicenow.BuildUpdateSet(servicenow.Options{Tables: []string{"Incident; drop"}}); err == nil {
		t.Fatal("a malformed table name was accepted")
	}
}

// TestDefaultFields_CoverTheShippedMappings: every field the bridge's
// shipped mapping of a table reads or writes (its pairs, link, close code
// and notes, number) is in the business rules' default list for that table,
// so a webhook carries what the bridge needs without setting
// nowbridge.fields.<table>; and the two ship the same tables.
func TestDefaultFields_CoverTheShippedMappings(t *testing.T) {
	if got, want := mapping.Shipped(), slices.Sorted(slices.Values(servicenow.ShippedTables())); !slices.Equal(got, want) {
		t.Errorf("the bridge ships mappings for %v, the business rules default field lists for %v", got, want)
	}
	for _, table := range servicenow.ShippedTables() {
		set, err := mapping.Load(nil, []string{table}, nil)
		if err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		m, _ := set.ForTable(table)
		need := set.Fields(table)
		for _, f := range m.Fields {
			need = append(need, f.ServiceNow)
		}
		def := servicenow.DefaultFieldList(table)
		slices.Sort(need)
		for _, f := range slices.Compact(need) {
			if !slices.Contains(def, f) {
				t.Errorf("%s: the mapping uses %s, which NowbridgeWebhook.DEFAULT_FIELDS.%s does not send", table, f, table)
			}
		}
	}
}
