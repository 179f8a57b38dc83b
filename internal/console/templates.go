package console

import (
	"fmt"
	"html/template"
	"strings"
	"time"
)

// pageNames are the templates/<name>.html files, each rendered inside
// templates/layout.html.
var pageNames = []string{"login", "overview", "dlq", "dlq-show", "purge", "trace"}

func parsePages() (map[string]*template.Template, error) {
	out := map[string]*template.Template{}
	for _, name := range pageNames {
		t, err := template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", name, err)
		}
		out[name] = t
	}
	return out, nil
}

var funcs = template.FuncMap{
	"ago":      ago,
	"bytes":    humanBytes,
	"rfc3339":  func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"clock":    func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.000") },
	"rate":     func(f float64) string { return fmt.Sprintf("%.1f/s", f) },
	"num":      num,
	"decision": decisionClass,
	"short":    short,
	"json":     func(b []byte) string { return prettyBody(b) },
}

// decisionClass colours a trace decision: done, worth a look, or failed.
func decisionClass(d string) string {
	switch d {
	case "stored", "applied", "written", "unchanged", "created", "updated":
		return "ok"
	case "rejected", "dead_lettered", "failed":
		return "bad"
	}
	return "warn"
}

func short(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return strings.ToValidUTF8(s[:n-1], "") + "…"
	}
	return s
}

func ago(now, t time.Time) string {
	if t.IsZero() || t.Year() < 2000 {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return d.Round(time.Second).String() + " ago"
	case d < 48*time.Hour:
		return d.Round(time.Minute).String() + " ago"
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
