package doctor

// The bridge's own webhook endpoint, probed from outside as ServiceNow
// reaches it.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

func (d *run) webhook(ctx context.Context, base *http.Client) {
	c := Check{ID: "webhook", Title: "Bridge webhook endpoint"}
	if d.opt.WebhookURL == "" {
		c.Status, c.Detail = Skip, "pass --webhook-url https://<bridge>/webhooks/servicenow to check it"
		d.add(c)
		return
	}
	if len(d.opt.WebhookSecrets) == 0 {
		c.Status, c.Detail, c.Fix = Fail, "no webhook secret configured", FixWebhookSecret
		d.add(c)
		return
	}
	now := d.opt.Now()
	ev := &events.SNEvent{Table: probeTable, SysID: strings.Repeat("0", 32), Action: events.ActionUpdate,
		SysUpdatedOn: now.UTC().Format(events.SNTimeLayout), SysUpdatedBy: "nowbridge.doctor", Record: events.Fields{}}
	body, err := events.EncodeWebhookBody(ev)
	if err != nil {
		c.Status, c.Detail = Fail, err.Error()
		d.add(c)
		return
	}
	id := "nowbridge-doctor:" + strconv.FormatInt(now.UnixNano(), 36)

	unsigned, err := post(ctx, base, d.opt.WebhookURL, body, nil)
	if err != nil {
		c.Status, c.Detail, c.Fix = Fail, "POST "+d.opt.WebhookURL+": "+trim(err.Error()), FixWebhookUnreachable
		d.add(c)
		return
	}
	h := http.Header{}
	webhook.SetHeaders(h, d.opt.WebhookSecrets[0], id, now, body)
	signed, err := post(ctx, base, d.opt.WebhookURL, body, h)
	if err != nil {
		c.Status, c.Detail, c.Fix = Fail, "POST "+d.opt.WebhookURL+": "+trim(err.Error()), FixWebhookUnreachable
		d.add(c)
		return
	}
	switch {
	case unsigned == http.StatusNotFound || unsigned == http.StatusMethodNotAllowed:
		c.Status, c.Fix = Fail, FixWebhookPath
		c.Detail = fmt.Sprintf("POST %s answered %d", d.opt.WebhookURL, unsigned)
	case unsigned != http.StatusUnauthorized:
		c.Status, c.Fix = Fail, FixWebhookOpen
		c.Detail = fmt.Sprintf("an unsigned probe got %d, want 401", unsigned)
	case signed == http.StatusUnauthorized:
		c.Status, c.Fix = Fail, FixWebhookMismatch
		c.Detail = "reachable, but a probe signed with the first of the configured secrets got 401"
	case signed == http.StatusUnprocessableEntity || signed == http.StatusAccepted:
		c.Status = Pass
		c.Detail = fmt.Sprintf("reachable; unsigned probe refused (401), signed probe accepted (%d for the unsynced table %s, nothing stored)", signed, probeTable)
	default:
		c.Status, c.Fix = Fail, "see the bridge's log for this request ("+id+")"
		c.Detail = fmt.Sprintf("reachable, unsigned probe refused (401), but the signed probe got %d", signed)
	}
	d.add(c)
}

func post(ctx context.Context, hc *http.Client, url string, body []byte, h http.Header) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	for k, v := range h {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}
