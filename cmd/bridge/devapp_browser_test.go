package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/nowbridge/nowbridge/internal/snsim"
)

// chromium finds a Chromium to drive: NOWBRIDGE_CHROMIUM, else Debian's
// /usr/bin/chromium or one on PATH. .ci/run installs Debian's chromium
// where it is missing; the test skips, saying why, only where none is.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("NOWBRIDGE_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no Chromium on this machine: install Debian's chromium (apt-get install chromium; bash .ci/run does) or set NOWBRIDGE_CHROMIUM to a Chromium binary to run the helpdesk's browser test")
	return ""
}

// newBrowser starts a headless Chromium with a new empty profile and no
// background traffic (the machine's network is closed beyond loopback).
func newBrowser(ctx context.Context, t *testing.T, path string) context.Context {
	t.Helper()
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.WindowSize(1280, 1000),
	)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc()
	})
	if err := chromedp.Do(bctx); err != nil { // starts the browser
		t.Fatalf("start Chromium %s: %v", path, err)
	}
	return bctx
}

// slow bounds every wait for something the page or ServiceNow should show:
// generous, for a loaded 2-core machine under -race (a pass takes ~10s).
const slow = 30 * time.Second

// page drives the helpdesk in the browser.
type page struct {
	t   *testing.T
	ctx context.Context
}

func (p *page) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, slow)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.t.Fatalf("%s: %v\npage now:\n%s", what, err, p.text())
	}
}

// submit clicks a form's button and waits for the page the form leads to
// (a marker set on the old page is gone and the new one has loaded).
func (p *page) submit(what, button string) {
	p.t.Helper()
	p.do(what, chromedp.Evaluate[chromedp.Void](`window.__before_submit = true`), chromedp.Click(chromedp.CSS(button)))
	p.waitJS(what+": the next page", `!window.__before_submit && document.readyState === "complete"`, slow)
}

// text is what the page shows, for failure messages.
func (p *page) text() string {
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
	if err != nil {
		return "(unreadable: " + err.Error() + ")"
	}
	return s
}

// waitJS waits until the JavaScript expression is truthy in the page (the
// page's own polling updates it) and returns its value as text. It asks
// from Go every 50ms rather than with a poll inside the page, so a
// navigation in between (a form's redirect) only costs a round.
func (p *page) waitJS(what, expr string, timeout time.Duration) string {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	js := `(() => { try { const v = (` + expr + `); return v ? String(v) : ""; } catch (e) { return ""; } })()`
	var last error
	for {
		ctx, cancel := context.WithTimeout(p.ctx, 2*time.Second)
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](js))
		cancel()
		if err == nil && v != "" {
			return v
		}
		last = err
		if time.Now().After(deadline) || p.ctx.Err() != nil {
			p.t.Fatalf("waited %v for %s (last error: %v)\npage now:\n%s", timeout, what, last, p.text())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sel is document.querySelector's text, "" when absent.
func sel(css, prop string) string {
	return fmt.Sprintf(`(document.querySelector(%q) || {})[%q]`, css, prop)
}

// incidentOf finds the simulator's incident linked to an external id.
func incidentOf(sim *snsim.Server, externalID string) (snsim.Record, bool) {
	for _, id := range sim.IDs("incident") {
		if rec, ok := sim.Get("incident", id); ok && rec["correlation_id"] == externalID {
			return rec, true
		}
	}
	return nil, false
}

// waitSim waits until the simulator's record satisfies ok.
func waitSim(t *testing.T, what string, get func() (snsim.Record, bool), ok func(snsim.Record) bool, timeout time.Duration) snsim.Record {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		rec, found := get()
		if found && ok(rec) {
			return rec
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for ServiceNow: %s; the record is %v", timeout, what, rec)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// TestDevApp_BrowserTicketRoundTrip drives the helpdesk of `bridge dev
// --app` in a real headless Chromium: a ticket created in the page gets
// its INC number, the incident changed in ServiceNow shows on the page, a
// comment and a resolve from the page reach ServiceNow, and a change
// ServiceNow refuses shows its reason and the fix beside the ticket.
func TestDevApp_BrowserTicketRoundTrip(t *testing.T) {
	path := chromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	logs := &lockedBuffer{}
	st, wait, err := startDev(ctx, logs, devOptions{listen: "127.0.0.1:0", simListen: "127.0.0.1:0", natsListen: "127.0.0.1:0",
		app: true, appListen: "127.0.0.1:0", dataDir: t.TempDir(), tables: []string{"incident"}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		if err := wait(); err != nil {
			t.Errorf("dev stopped with %v", err)
		}
		if t.Failed() {
			t.Logf("dev logs:\n%s", logs.String())
		}
	}()
	if st.appURL == "" {
		t.Fatal("bridge dev --app started no helpdesk")
	}
	p := &page{t: t, ctx: newBrowser(ctx, t, path)}
	defer p.screenshot("final")

	// 1. Create a ticket in the page; its INC number appears.
	p.do("open the helpdesk and create a ticket",
		chromedp.Navigate(st.appURL),
		chromedp.WaitVisible(chromedp.CSS("#new-title")),
		chromedp.SendKeys(chromedp.CSS("#new-title"), "Printer on floor 3 jams"),
		chromedp.SendKeys(chromedp.CSS("#new-description"), "Every second page, since this morning"),
		chromedp.SetValue(chromedp.CSS("#new-urgency"), "1"),
		chromedp.SetValue(chromedp.CSS("#new-impact"), "2"),
	)
	clicked := time.Now()
	p.submit("submit the new ticket", "#create")
	loc := p.waitJS("the ticket's page", `location.pathname.startsWith("/tickets/") && location.pathname`, slow)
	id := strings.TrimPrefix(loc, "/tickets/")
	number := p.waitJS("the INC number", sel("#ticket-number a.number", "textContent"), slow)
	toNumber := time.Since(clicked)
	if !regexp.MustCompile(`^INC\d{7}$`).MatchString(number) {
		t.Fatalf("the page shows number %q, want INC and seven digits", number)
	}
	rec, ok := incidentOf(st.sim, id)
	if !ok || rec["number"] != number || rec["short_description"] != "Printer on floor 3 jams" || rec["urgency"] != "1" || rec["impact"] != "2" {
		t.Fatalf("ServiceNow holds %v for %s, want incident %s with the page's title, urgency 1 and impact 2", rec, id, number)
	}
	sysID := rec["sys_id"]
	href := p.waitJS("the incident's link", sel("#ticket-number a.number", "href"), slow)
	if want := "nav_to.do?uri=incident.do?sys_id=" + sysID; !strings.HasSuffix(href, want) {
		t.Fatalf("the number links to %q, want the record's page ending %q", href, want)
	}
	p.waitJS("the ticket synced", `document.querySelector("#ticket-sync [data-sync=synced]")`, slow)
	t.Logf("INC number on the page %v after the click (the page polls once a second)", toNumber.Round(10*time.Millisecond))

	// 2. Change the incident in ServiceNow; the page follows.
	if _, err := st.sim.Update("incident", sysID, map[string]string{"short_description": "Printer on floor 3 jams: fuser worn", "state": "2", "urgency": "2"}, "beth.anglin"); err != nil {
		t.Fatal(err)
	}
	p.waitJS("ServiceNow's title", sel("#ticket-title", "textContent")+` === "Printer on floor 3 jams: fuser worn"`, slow)
	p.waitJS("ServiceNow's state", `document.querySelector("#ticket-status[data-status=in_progress]")`, slow)
	// impact 2 and urgency 2 make priority 3 in ServiceNow.
	p.waitJS("ServiceNow's priority", sel("#ticket-priority", "textContent")+` === "3 - Moderate"`, slow)

	// 3. Comment and resolve in the page; ServiceNow resolves the incident.
	p.do("comment", chromedp.Navigate(st.appURL+loc), chromedp.WaitVisible(chromedp.CSS("#comment")),
		chromedp.SendKeys(chromedp.CSS("#comment"), "Ordered a new fuser"))
	p.submit("add the comment", "#add-comment")
	p.do("resolve", chromedp.SendKeys(chromedp.CSS("#resolve-note"), "Fuser replaced; printing again"))
	p.submit("resolve the ticket", "#resolve")
	get := func() (snsim.Record, bool) { return st.sim.Get("incident", sysID) }
	rec = waitSim(t, "the incident resolved with a close code and notes", get, func(r snsim.Record) bool {
		return r["state"] == "6" && r["close_code"] != "" && r["close_notes"] != ""
	}, slow)
	journal := st.sim.JournalDisplay("incident", sysID, "comments")
	if !strings.Contains(journal, "Ordered a new fuser") || !strings.Contains(journal, "Fuser replaced; printing again") {
		t.Fatalf("the incident's comments are %q, want the page's comment and resolution note", journal)
	}
	p.waitJS("the resolve synced", `document.querySelector("#ticket-status[data-status=resolved]") && document.querySelector("#ticket-sync [data-sync=synced]")`, slow)
	if rec["short_description"] != "Printer on floor 3 jams: fuser worn" {
		t.Fatalf("the resolve put back the title: ServiceNow holds %q", rec["short_description"])
	}

	// 4. A change ServiceNow refuses shows its reason and the fix; after
	//    the fix the next change goes through.
	st.sim.SetACL(snsim.ACL{DenyWrites: true})
	p.do("edit while ServiceNow refuses writes", chromedp.Navigate(st.appURL+loc), chromedp.WaitVisible(chromedp.CSS("#edit-title")),
		chromedp.Clear(chromedp.CSS("#edit-title")), chromedp.SendKeys(chromedp.CSS("#edit-title"), "Printer on floor 3: reopened"),
		chromedp.SetValue(chromedp.CSS("#edit-status"), "in_progress"))
	p.submit("save the edit", "#save")
	reason := p.waitJS("the rejection", `document.querySelector("#ticket-sync [data-sync=rejected]") && document.querySelector("#ticket-sync .reason").textContent`, slow)
	hint := p.waitJS("the rejection's hint", sel("#ticket-sync .hint", "textContent"), slow)
	if !strings.Contains(reason, "ACL") && !strings.Contains(reason, "security") {
		t.Fatalf("the page gives the rejection as %q, want ServiceNow's ACL message", reason)
	}
	t.Logf("rejected on the page: %q, hint %q", reason, hint)
	p.do("open the list", chromedp.Navigate(st.appURL), chromedp.WaitVisible(chromedp.CSS("#ticket-rows")))
	p.waitJS("the list's row", fmt.Sprintf(`(() => { const r = document.querySelector('tr[data-ticket=%q]'); return r && r.querySelector('[data-sync=rejected]') && r.textContent.includes(%q); })()`, id, number), slow)
	p.screenshot("rejected")

	st.sim.SetACL(snsim.ACL{})
	p.do("edit again once ServiceNow accepts", chromedp.Navigate(st.appURL+loc), chromedp.WaitVisible(chromedp.CSS("#edit-title")),
		chromedp.Clear(chromedp.CSS("#edit-description")), chromedp.SendKeys(chromedp.CSS("#edit-description"), "Reopened: jams again"))
	p.submit("save the next edit", "#save")
	p.waitJS("the next change synced", `document.querySelector("#ticket-sync [data-sync=synced]")`, slow)
	waitSim(t, "the change after the refusal", get, func(r snsim.Record) bool {
		return r["description"] == "Reopened: jams again"
	}, slow)
}

// screenshot saves the page as a PNG in NOWBRIDGE_SCREENSHOTS, when set.
func (p *page) screenshot(name string) {
	dir := os.Getenv("NOWBRIDGE_SCREENSHOTS")
	if dir == "" {
		return
	}
	ctx, cancel := context.WithTimeout(p.ctx, slow)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Logf("screenshot %s: %v", name, err)
		return
	}
	if err := os.WriteFile(filepath.Join(dir, "helpdesk-"+name+".png"), png, 0o644); err != nil {
		p.t.Logf("screenshot %s: %v", name, err)
	}
}
