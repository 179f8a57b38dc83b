package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/nowbridge/nowbridge/internal/dlq"
	"github.com/nowbridge/nowbridge/internal/snsim"
)

// shots are the console's screenshots: in NOWBRIDGE_SCREENSHOTS when set
// (the reference run writes docs/console/ so), else the test's artifact
// directory (kept with `go test -artifacts`).
type shots struct {
	p   *page
	dir string
}

func newShots(t *testing.T, p *page) shots {
	dir := os.Getenv("NOWBRIDGE_SCREENSHOTS")
	if dir == "" {
		dir = t.ArtifactDir()
	}
	return shots{p: p, dir: dir}
}

// take saves the whole page as console-<name>.png, failing the test when
// it cannot (a screenshot is one of the things this test delivers).
func (s shots) take(name string) {
	s.p.t.Helper()
	ctx, cancel := context.WithTimeout(s.p.ctx, slow)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		s.p.t.Fatalf("screenshot %s: %v", name, err)
	}
	file := filepath.Join(s.dir, "console-"+name+".png")
	if err := os.WriteFile(file, png, 0o644); err != nil {
		s.p.t.Fatalf("screenshot %s: %v", name, err)
	}
	s.p.t.Logf("screenshot %s (%d KB)", file, len(png)/1024)
}

// TestConsole_BrowserOverviewTraceAndDeadLetterRetry drives the console of
// `bridge serve` (the simulator behind it, after a workload with a
// conflict, a 429, a reconcile gap and two refused changes) in a real
// headless Chromium: log in with the token, read the overview, trace the
// incident by its number and see its steps, retry a dead letter once its
// cause is fixed and see it leave the list and reach ServiceNow, and purge
// the other through the confirmation page. A screenshot of each page.
func TestConsole_BrowserOverviewTraceAndDeadLetterRetry(t *testing.T) {
	path := chromium(t)
	s := startConsoleStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p := &page{t: t, ctx: newBrowser(ctx, t, path)}
	shot := newShots(t, p)

	// 1. The console asks for its token.
	p.do("open the console", chromedp.Navigate(s.consoleURL+"/"), chromedp.WaitVisible(chromedp.CSS("#token")))
	shot.take("login")
	p.do("type the token", chromedp.SendKeys(chromedp.CSS("#token"), s.token))
	p.submit("log in", "#login")
	if who := p.waitJS("signed in", sel("#who", "textContent"), slow); who != "ops" {
		t.Fatalf("the console says signed in as %q, want ops (the token's name)", who)
	}

	// 2. The overview: this replica owns the sync, the streams and
	//    consumers, the workload's counts, and sparklines once sampled.
	owner := p.waitJS("the sync owner", sel("#sync-owner", "textContent"), slow)
	if !strings.Contains(p.text(), owner+" this") {
		t.Errorf("the overview's owner %q is not marked as this replica:\n%s", owner, p.text())
	}
	for _, want := range []string{`#streams tr[data-stream=SN_EVENTS]`, `#streams tr[data-stream=APP_EVENTS]`,
		`#consumers tr[data-consumer=apply]`, `#consumers tr[data-consumer=writeback]`, `#reconcile tr[data-table=incident]`} {
		p.waitJS(want, fmt.Sprintf(`document.querySelector(%q)`, want), slow)
	}
	for id, atLeast := range map[string]int{"dlq-total": 2, "conflicts": 1, "echoes": 1, "rate-limited": 1} {
		p.waitJS(fmt.Sprintf("#%s at least %d", id, atLeast), fmt.Sprintf(`parseInt(%s) >= %d`, sel("#"+id, "textContent"), atLeast), slow)
	}
	// The page refreshes itself; two samples (5 s apart) draw a line.
	p.waitJS("a throughput sparkline", `document.querySelector("#streams svg.spark polyline")`, 30*time.Second)
	shot.take("overview")

	// 3. Trace the incident by its number: every step and its decision.
	p.do("search for the incident", chromedp.Navigate(s.consoleURL+"/trace"), chromedp.WaitVisible(chromedp.CSS("#q")),
		chromedp.SendKeys(chromedp.CSS("#q"), s.number))
	p.submit("trace it", "#search")
	if got := p.waitJS("the timeline's number", sel("#trace-number", "textContent"), slow); got != s.number {
		t.Fatalf("the timeline is of %q, want %s", got, s.number)
	}
	for _, d := range []string{"applied", "written", "echo_suppressed", "conflict", "rejected"} {
		p.waitJS("a "+d+" step", fmt.Sprintf(`document.querySelector("#steps tr.step[data-decision=%s]")`, d), slow)
	}
	steps := p.waitJS("the steps", `document.querySelectorAll("#steps tr.step").length`, slow)
	t.Logf("%s's timeline: %s steps", s.number, steps)
	shot.take("trace")

	// 4. The dead letters: both refused changes, with ServiceNow's reason.
	entries, err := dlq.List(ctx, s.js, "writeback")
	if err != nil || len(entries) != 2 {
		t.Fatalf("dead letters %v (%v), want the two refused changes", entries, err)
	}
	var tck1 dlq.Entry
	for _, e := range entries {
		if strings.Contains(e.Record, "TCK-1") {
			tck1 = e
		}
	}
	p.do("open the dead letters", chromedp.Navigate(s.consoleURL+"/dlq"), chromedp.WaitVisible(chromedp.CSS("#dead-letters")))
	if n := p.waitJS("two rows", `document.querySelectorAll("#dead-letters tbody tr").length`, slow); n != "2" {
		t.Fatalf("the list shows %s dead letters, want 2", n)
	}
	shot.take("dead-letters")
	row := fmt.Sprintf(`#dead-letters tr[data-seq="%d"]`, tck1.Seq)
	p.do("open TCK-1's dead letter", chromedp.Click(chromedp.CSS(row+" a")), chromedp.WaitVisible(chromedp.CSS("#reason")))
	if reason := p.waitJS("the reason", sel("#reason", "textContent"), slow); !strings.Contains(reason, "ACL") {
		t.Fatalf("the dead letter's reason is %q, want ServiceNow's ACL message", reason)
	}
	p.waitJS("the hint", sel("#hint", "textContent"), slow)
	shot.take("dead-letter")

	// 5. Fix the cause, retry: the dead letter leaves the list and the
	//    change reaches ServiceNow.
	s.sim.SetACL(snsim.ACL{})
	p.submit("retry it", "#retry")
	flash := p.waitJS("the retry's message", sel("#flash", "textContent"), slow)
	if !strings.Contains(flash, fmt.Sprintf("Dead letter %d retried", tck1.Seq)) {
		t.Errorf("after the retry the page says %q", flash)
	}
	p.waitJS("the list without it", fmt.Sprintf(`location.pathname === "/dlq" && !document.querySelector(%q) && document.querySelectorAll("#dead-letters tbody tr").length === 1`, row), slow)
	s.waitSim("the retried change (status on hold) written", func(r snsim.Record) bool { return r["state"] == "3" })
	shot.take("retried")

	// 6. Purge the other through the confirmation page.
	p.do("ask to purge", chromedp.Click(chromedp.CSS("#purge")), chromedp.WaitVisible(chromedp.CSS("#confirm-purge")))
	if q := p.waitJS("the question", sel("#purge-question", "textContent"), slow); !strings.Contains(q, "Delete 1 dead letters") {
		t.Errorf("the confirmation asks %q, want it to name 1 dead letter", q)
	}
	shot.take("purge")
	p.submit("confirm the purge", "#confirm-purge")
	p.waitJS("an empty list", `document.querySelector("#no-dead-letters")`, slow)
	if n, err := dlq.Count(ctx, s.js); err != nil || n["writeback"] != 0 {
		t.Fatalf("after the purge BRIDGE_DLQ holds %v (%v), want none", n, err)
	}
	if logs := s.b.logs.String(); !strings.Contains(logs, `"msg":"console action","who":"ops"`) || !strings.Contains(logs, `"action":"dlq.retry"`) || !strings.Contains(logs, `"action":"dlq.purge"`) {
		t.Errorf("the retry and the purge are not logged with who did them:\n%s", logs)
	}
}
