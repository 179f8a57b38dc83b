package servicenow_test

import (
	"bytes"
	"encoding/xml"
	"flag"
	"os"
	"regexp"
	"strings"
	"testing"

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
		Name  string `xml:"name"`
		SysID string `xml:"sys_id"`
		State string `xml:"state"`
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
	} `xml:"sys_script"`
	Property *struct {
		Name  string `xml:"name"`
		Type  string `xml:"type"`
		Value string `xml:"value"`
	} `xml:"sys_properties"`
}

// TestUpdateSet_Structure parses the update set the way an importer reads it:
// one remote update set, and payloads holding the script include, the
// business rules (with the scripts exactly as in the sources) and the
// properties, the secret one typed password2 and empty.
func TestUpdateSet_Structure(t *testing.T) {
	raw, err := servicenow.BuildUpdateSet(servicenow.Options{Tables: []string{"incident", "sn_customerservice_case"}})
	if err != nil {
		t.Fatal(err)
	}
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

	rules := map[string]bool{}
	props := map[string]string{}
	includes := 0
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
		switch {
		case rec.Include != nil:
			includes++
			if rec.Include.Script != include || rec.Include.API != "global.NowbridgeWebhook" || rec.Include.Active != "true" {
				t.Errorf("script include differs from business_rules/NowbridgeWebhook.js or is not active/global")
			}
		case rec.Rule != nil:
			r := rec.Rule
			if r.When != "after" || r.Advanced != "true" || r.Active != "true" || r.Condition != servicenow.ConditionScript {
				t.Errorf("rule %s on %s: when=%s advanced=%s active=%s condition=%q", r.Name, r.Collection, r.When, r.Advanced, r.Active, r.Condition)
			}
			switch {
			case r.Insert == "true" && r.Update == "true" && r.Delete == "false":
				if r.Script != insertUpdate {
					t.Errorf("insert/update rule on %s differs from webhook_insert_update.js", r.Collection)
				}
				rules[r.Collection+"/insert_update"] = true
			case r.Insert == "false" && r.Update == "false" && r.Delete == "true":
				if r.Script != deleteRule {
					t.Errorf("delete rule on %s differs from webhook_delete.js", r.Collection)
				}
				rules[r.Collection+"/delete"] = true
			default:
				t.Errorf("rule %s on %s has actions insert=%s update=%s delete=%s", r.Name, r.Collection, r.Insert, r.Update, r.Delete)
			}
		case rec.Property != nil:
			props[rec.Property.Name] = rec.Property.Type + "=" + rec.Property.Value
		default:
			t.Errorf("%s: payload holds no known record: %s", up.Name, up.Payload)
		}
	}
	if includes != 1 {
		t.Errorf("%d script includes, want 1", includes)
	}
	for _, want := range []string{"incident/insert_update", "incident/delete", "sn_customerservice_case/insert_update", "sn_customerservice_case/delete"} {
		if !rules[want] {
			t.Errorf("missing business rule %s (have %v)", want, rules)
		}
	}
	wantProps := map[string]string{
		"nowbridge.webhook_url":                    "string=",
		"nowbridge.webhook_secret":                 "password2=",
		"nowbridge.http_timeout_ms":                "integer=10000",
		"nowbridge.response_wait_seconds":          "integer=0",
		"nowbridge.skip_user":                      "string=",
		"nowbridge.enabled":                        "boolean=true",
		"nowbridge.fields.incident":                "string=" + servicenow.DefaultIncidentFields,
		"nowbridge.fields.sn_customerservice_case": "string=",
	}
	for name, want := range wantProps {
		if props[name] != want {
			t.Errorf("property %s = %q, want %q", name, props[name], want)
		}
	}
	if len(props) != len(wantProps) {
		t.Errorf("%d properties, want %d: %v", len(props), len(wantProps), props)
	}
	m := regexp.MustCompile(`incident: '([^']*)' \+\s*'([^']*)'`).FindStringSubmatch(include)
	if m == nil || m[1]+m[2] != servicenow.DefaultIncidentFields {
		t.Errorf("NowbridgeWebhook.DEFAULT_FIELDS.incident (%q) differs from servicenow.DefaultIncidentFields", m)
	}
}

func TestUpdateSet_RejectsBadTable(t *testing.T) {
	if _, err := servicenow.BuildUpdateSet(servicenow.Options{Tables: []string{"Incident; drop"}}); err == nil {
		t.Fatal("a malformed table name was accepted")
	}
}
