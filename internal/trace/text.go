package trace

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
)

// WriteText writes the timeline for people (bridge trace): the record and
// its bridge_state and bridge_links entries, then one line per step with
// its time, stage, source, version, decision and reason.
func (t *Timeline) WriteText(w io.Writer) error {
	var b strings.Builder
	switch {
	case t.SysID != "":
		fmt.Fprintf(&b, "record        %s/%s", t.Table, t.SysID)
		if t.Number != "" {
			fmt.Fprintf(&b, "  %s", t.Number)
		}
		b.WriteByte('\n')
	default:
		fmt.Fprintf(&b, "record        none: %s %s is not linked to a ServiceNow record\n", t.Entity, t.ExternalID)
	}
	rs, _ := t.State.(RecordState)
	switch {
	case rs.State == nil && t.SysID != "":
		b.WriteString("bridge_state  none: no version of the record was applied or written\n")
	case rs.State != nil:
		st := rs.State
		fmt.Fprintf(&b, "bridge_state  v%d", st.Version)
		if st.UpdatedOn != "" {
			fmt.Fprintf(&b, "  updated %s", st.UpdatedOn)
		}
		if st.Deleted {
			b.WriteString("  deleted")
		}
		for _, k := range slices.Sorted(maps.Keys(st.Fields)) {
			if v := st.Fields[k]; v != "" {
				fmt.Fprintf(&b, " %s=%s", k, short(v, 40))
			}
		}
		b.WriteByte('\n')
	}
	switch {
	case rs.Link != nil:
		fmt.Fprintf(&b, "bridge_links  %s %s <-> %s/%s\n", rs.Link.Entity, rs.Link.ExternalID, rs.Link.Table, rs.Link.SysID)
	case t.SysID != "":
		b.WriteString("bridge_links  none: the record is not linked to an app id\n")
	}
	b.WriteByte('\n')
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	if len(t.Steps) == 0 {
		_, err := fmt.Fprintf(w, "no decisions recorded (the log keeps %s, and the last %d entries of a record)\n", days(events.TraceMaxAge), events.TraceMaxPerRecord)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tSTAGE\tSOURCE\tVERSION\tDECISION\tREASON")
	for _, s := range t.Steps {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Time.UTC().Format("2006-01-02T15:04:05.000Z"), s.Stage, dash(s.Source),
			versions(s.Version, s.AppVersion), s.Decision, s.why())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\n%d steps; the log keeps %s, and the last %d entries of a record\n", len(t.Steps), days(events.TraceMaxAge), events.TraceMaxPerRecord)
	return err
}

// why is a step's reason column: the reason, the hint and the message it
// names.
func (s Step) why() string {
	var parts []string
	if s.Reason != "" {
		parts = append(parts, oneLine(s.Reason))
	}
	if s.Hint != "" && !strings.Contains(s.Reason, s.Hint) {
		parts = append(parts, "hint: "+oneLine(s.Hint))
	}
	for _, r := range s.Refs {
		ref := r.Stream + " #" + strconv.FormatUint(r.Seq, 10)
		if r.Stream == s.Stream && r.Seq == s.Seq && s.MessageGone {
			ref += " (no longer in the stream)"
		}
		parts = append(parts, "["+ref+"]")
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

func versions(v, app int64) string {
	switch {
	case v != NoVersion && app != 0:
		return "v" + strconv.FormatInt(v, 10) + " (app v" + strconv.FormatInt(app, 10) + ")"
	case v != NoVersion:
		return "v" + strconv.FormatInt(v, 10)
	case app != 0:
		return "app v" + strconv.FormatInt(app, 10)
	}
	return "-"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func short(s string, n int) string {
	s = oneLine(s)
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// days renders a retention in days when it is whole days.
func days(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return strconv.Itoa(int(d/(24*time.Hour))) + " days"
	}
	return d.String()
}
