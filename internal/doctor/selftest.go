package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/snclient"
)

// The instance self-test (--instance-selftest): the doctor asks the
// instance to sign and send a test webhook through the update set's
// Scripted REST resource, which runs the business rules' own Script
// Include with their own property, and reads the bridge's verdict from
// its answer. It is the one check that proves what the instance does with
// nowbridge.webhook_secret and non-ASCII text, which nothing documents.

// Fixes of the self-test check. Tests and docs match on them.
const (
	FixSelfTestSecret = "put one of the bridge's BRIDGE_WEBHOOK_SECRETS (whsec_<base64>) in the ServiceNow system " +
		"property nowbridge.webhook_secret (during a rotation, both, comma-separated)"
	FixSelfTestEncrypted = "the script reads the encrypted form of the password2 property nowbridge.webhook_secret: " +
		"re-enter the whsec_ secret in the property; if the self-test still says this, see \"The self-test\" in " +
		"docs/servicenow-setup.md"
	FixSelfTestCharset = "the instance signs or sends text in a charset other than UTF-8, so every webhook with a " +
		"non-ASCII character is refused or altered: set the ServiceNow system property nowbridge.ascii_json to true " +
		"(the scripts then send non-ASCII as \\u escapes, the same bytes in every charset) and run the self-test again"
	FixSelfTestUnreachable = "the instance cannot reach the bridge at nowbridge.webhook_url: start the bridge " +
		"(bridge serve), check the URL in the property, and open the bridge's firewall to the instance's outbound " +
		"addresses (a MID server does not carry these calls)"
	FixSelfTestURL  = "set the ServiceNow system property nowbridge.webhook_url to https://<bridge>/webhooks/servicenow"
	FixSelfTestRole = "grant the OAuth Application User the role " + events.SelfTestRole + " (created by the update " +
		"set; it only allows the self-test)"
	FixSelfTestMissing = "import the nowbridge update set (1.1.0 or later, servicenow/update_set/nowbridge.xml); if it " +
		"is installed, open System Web Services > Scripted REST APIs > nowbridge and set BRIDGE_SN_SELFTEST_PATH " +
		"(or --selftest-path) to its Base API path followed by " + events.SelfTestResource
	FixSelfTestPath = "BRIDGE_SN_SELFTEST_PATH (--selftest-path) names no resource: set it to the Base API path of " +
		"the Scripted REST API nowbridge (System Web Services > Scripted REST APIs) followed by " + events.SelfTestResource
	FixSelfTestBodyAltered = "something between the instance and the bridge changes the request (a proxy re-encoding " +
		"or re-formatting JSON, or dropping headers): send the instance's calls to the bridge unaltered"
)

// instanceSelfTest runs the check with the doctor's authenticated client.
func (d *run) instanceSelfTest(ctx context.Context, sn *snclient.Client) {
	c := Check{ID: "selftest", Title: "Instance self-test (the instance signs and sends a test webhook)"}
	if !d.opt.InstanceSelfTest {
		d.add(d.skippedSelfTest(""))
		return
	}
	path, source := d.selfTestPath(ctx, sn)
	c.Title += " at " + path
	resp, err := sn.CallScripted(ctx, "POST", path, []byte("{}"))
	if err != nil {
		c.Status = Fail
		c.Detail = "POST " + path + " (" + source + "): " + trim(err.Error())
		var ae *snclient.APIError
		switch {
		case errors.As(err, &ae) && (ae.Status == 400 || ae.Status == 404):
			c.Fix = FixSelfTestMissing
			if d.opt.SelfTestPath != "" {
				c.Fix = FixSelfTestPath
			}
		case errors.As(err, &ae) && ae.Status == 403:
			c.Fix = FixSelfTestRole
		case errors.Is(err, snclient.ErrUnauthorized):
			c.Fix = FixAppUser
		default:
			c.Fix = orHint(err, "see the instance's system log for the self-test's transaction")
		}
		d.add(c)
		return
	}
	var env struct {
		Result *events.SelfTestOutcome `json:"result"`
	}
	if err := json.Unmarshal(resp.Body, &env); err != nil || env.Result == nil {
		c.Status, c.Fix = Fail, FixSelfTestPath
		c.Detail = fmt.Sprintf("POST %s (%s) answered %d without a self-test result: %s", path, source, resp.Status, trim(string(resp.Body)))
		d.add(c)
		return
	}
	d.add(selfTestVerdict(c, *env.Result, source, d.opt.WebhookURL))
}

func (d *run) skippedSelfTest(why string) Check {
	if !d.opt.InstanceSelfTest {
		why = "pass --instance-selftest to make the instance sign and send a test webhook to the bridge"
	}
	return Check{ID: "selftest", Title: "Instance self-test (the instance signs and sends a test webhook)", Status: Skip, Detail: why}
}

// selfTestPath finds the resource: the setting, else the API's record in
// sys_ws_definition where the user may read it, else the update set's
// default namespace. source says which, for the report.
func (d *run) selfTestPath(ctx context.Context, sn *snclient.Client) (path, source string) {
	if p := strings.TrimSpace(d.opt.SelfTestPath); p != "" {
		return p, "from BRIDGE_SN_SELFTEST_PATH"
	}
	q := snclient.And(snclient.Field("service_id").EQ(events.SelfTestAPIID), snclient.Field("active").EQ("true"))
	page, err := sn.List(ctx, "sys_ws_definition", snclient.ListOptions{Query: q, Fields: []string{"base_uri"}, Limit: 1})
	if err == nil && len(page.Records) > 0 {
		if base := strings.TrimSuffix(page.Records[0].Get("base_uri"), "/"); strings.HasPrefix(base, "/api/") {
			return base + events.SelfTestResource, "from sys_ws_definition"
		}
	}
	why := "sys_ws_definition is not readable to the integration user"
	if err == nil && page.Total == 0 {
		why = "sys_ws_definition lists no API " + events.SelfTestAPIID
	}
	return events.SelfTestPath(events.SelfTestNamespace), "the update set's default namespace; " + why
}

// selfTestVerdict turns the resource's outcome into the check: ✓, or the
// cause with its fix.
func selfTestVerdict(c Check, o events.SelfTestOutcome, source, webhookURL string) Check {
	where := " (" + source + ")"
	if webhookURL != "" && o.WebhookURL != "" && o.WebhookURL != webhookURL {
		where += fmt.Sprintf("; note: the instance posts to %s, not to --webhook-url %s", o.WebhookURL, webhookURL)
	}
	if o.OK {
		c.Status = Pass
		c.Detail = fmt.Sprintf("the instance signed a test event holding %q with nowbridge.webhook_secret (%d key(s)) and "+
			"the bridge at %s verified it (%d in %d ms): %s%s", events.SelfTestText, o.Keys, o.WebhookURL, o.Status, o.ElapsedMS, o.Detail, where)
		return c
	}
	c.Status = Fail
	switch o.Stage {
	case events.SelfTestStageConfig:
		c.Detail = "nothing sent: " + o.Error + where
		switch {
		case strings.Contains(o.Error, "webhook_url"):
			c.Fix = FixSelfTestURL
		case strings.Contains(o.Error, "encrypted"):
			c.Detail = "secret mismatch (the property is still encrypted): " + o.Error + where
			c.Fix = FixSelfTestEncrypted
		default:
			c.Detail = "secret mismatch (the property is empty): " + o.Error + where
			c.Fix = FixSelfTestSecret
		}
		return c
	case events.SelfTestStageSend:
		c.Detail = fmt.Sprintf("unreachable bridge: the instance's call to %s failed: %s%s", o.WebhookURL, o.Error, where)
		c.Fix = FixSelfTestUnreachable
		return c
	}
	answer := fmt.Sprintf("the bridge at %s answered %d", o.WebhookURL, o.Status)
	switch o.Result {
	case events.SelfTestSecretMismatch:
		c.Detail, c.Fix = "secret mismatch: nowbridge.webhook_secret is not one of the bridge's secrets; "+answer+": "+o.Detail+where, FixSelfTestSecret
	case events.SelfTestSecretEncrypted:
		c.Detail, c.Fix = "secret mismatch (the property is still encrypted): "+answer+": "+o.Detail+where, FixSelfTestEncrypted
	case events.SelfTestCharset, events.SelfTestTextAltered:
		c.Detail, c.Fix = "charset mismatch (the signature or text fails only because of non-ASCII characters): "+answer+": "+o.Detail+where, FixSelfTestCharset
	case events.SelfTestBodyAltered, events.SelfTestMissingHeaders:
		c.Detail, c.Fix = "the request changed on its way: "+answer+": "+o.Detail+where, FixSelfTestBodyAltered
	case events.SelfTestTimestampSkew, events.SelfTestBadTimestamp:
		c.Detail, c.Fix = "clock: "+answer+": "+o.Detail+where, FixClock
	default:
		c.Detail = answer + selfTestBody(o) + where
		switch {
		case o.Status == 404 || o.Status == 405:
			c.Fix = FixWebhookPath + " (nowbridge.webhook_url)"
		case o.Status == 503 || o.Status == 429:
			c.Fix = "the bridge could not take the test now (JetStream down or overloaded): see its /readyz and log, then run the doctor again"
		case o.Status >= 200 && o.Status < 300:
			c.Fix = "something other than the nowbridge receiver answers at nowbridge.webhook_url (a proxy or login page?): point it at https://<bridge>/webhooks/servicenow"
		default:
			c.Fix = "see the bridge's log for webhook-id " + o.WebhookID
		}
	}
	return c
}

func selfTestBody(o events.SelfTestOutcome) string {
	switch {
	case o.Detail != "":
		return ": " + o.Detail
	case o.Body != "":
		return ": " + trim(o.Body)
	}
	return ""
}
