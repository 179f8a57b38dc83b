package helpdesk

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/nowbridge/nowbridge/sdk/wire"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// web serves the helpdesk's page: server-rendered, with one small script
// that refreshes the parts showing sync state (static/poll.js). Every
// change goes to the store, whose outbox the publisher sends.
type web struct {
	store *Store
	kick  func() // wakes the outbox publisher
	log   *slog.Logger
	index *template.Template
	page  *template.Template
}

var statusLabels = map[string]string{
	StatusNew: "New", StatusInProgress: "In progress", StatusOnHold: "On hold",
	StatusResolved: "Resolved", StatusClosed: "Closed", StatusCanceled: "Canceled",
}

var priorityLabels = map[string]string{"1": "1 - Critical", "2": "2 - High", "3": "3 - Moderate", "4": "4 - Low", "5": "5 - Planning"}

var levelLabels = map[string]string{"1": "1 - High", "2": "2 - Medium", "3": "3 - Low"}

// levelField is a select of urgency or impact in a form.
type levelField struct{ Name, ID, Value string }

var funcs = template.FuncMap{
	"statusLabel": func(s string) string {
		if l, ok := statusLabels[s]; ok {
			return l
		}
		return s // a state the mapping does not name: ServiceNow's value
	},
	"priorityLabel": func(p string) string {
		if p == "" {
			return "—"
		}
		if l, ok := priorityLabels[p]; ok {
			return l
		}
		return p
	},
	"levelLabel": func(v string) string {
		if l, ok := levelLabels[v]; ok {
			return l
		}
		return v
	},
	"levels":   func() []string { return []string{"1", "2", "3"} },
	"statuses": func() []string { return Statuses },
	"field":    func(name, id, value string) levelField { return levelField{name, id, value} },
	"when":     func(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05") },
	"join": func(fs []string) string {
		if len(fs) == 0 {
			return "link to the ServiceNow record"
		}
		return strings.Join(fs, ", ")
	},
	"resolved": func(status string) bool {
		return status == StatusResolved || status == StatusClosed || status == StatusCanceled
	},
	"rejectText": rejectText,
	"outcomeLabel": func(c Change) string {
		switch {
		case c.Outcome == "" && !c.Published:
			return "waiting to be sent"
		case c.Outcome == "":
			return "sent, no answer yet"
		}
		return c.Outcome
	},
}

func newWeb(store *Store, kick func(), log *slog.Logger) (*web, error) {
	index, err := template.New("").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/index.html")
	if err != nil {
		return nil, err
	}
	page, err := template.New("").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/ticket.html")
	if err != nil {
		return nil, err
	}
	return &web{store: store, kick: kick, log: log, index: index, page: page}, nil
}

// handler routes the page. Forms are protected against cross-site posts
// (http.CrossOriginProtection) and the page allows only its own scripts.
func (w *web) handler() http.Handler {
	static, _ := fs.Sub(staticFS, "static")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", w.showIndex)
	mux.HandleFunc("GET /fragments/tickets", w.showRows)
	mux.HandleFunc("POST /tickets", w.create)
	mux.HandleFunc("GET /tickets/{id}", w.showTicket)
	mux.HandleFunc("GET /tickets/{id}/fragment", w.showDetail)
	mux.HandleFunc("POST /tickets/{id}", w.edit)
	mux.HandleFunc("POST /tickets/{id}/comments", w.comment)
	mux.HandleFunc("POST /tickets/{id}/resolve", w.resolve)
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) { _, _ = rw.Write([]byte("ok\n")) })
	return securityHeaders(http.NewCrossOriginProtection().Handler(mux))
}

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		h := rw.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		next.ServeHTTP(rw, r)
	})
}

type indexPage struct {
	Title   string
	Form    NewTicket
	Error   string
	Tickets []Ticket
}

type ticketPage struct {
	Title    string
	Ticket   Ticket
	Changes  []Change
	Comments []Comment
	Error    string
}

// render executes a template into a buffer first, so a failure is a clean
// 500 instead of half a page.
func (w *web) render(rw http.ResponseWriter, t *template.Template, name string, status int, data any) {
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, name, data); err != nil {
		w.fail(rw, fmt.Errorf("render %s: %w", name, err))
		return
	}
	rw.Header().Set("Content-Type", "text/html; charset=utf-8")
	rw.Header().Set("Cache-Control", "no-store")
	rw.WriteHeader(status)
	_, _ = rw.Write(buf.Bytes())
}

func (w *web) fail(rw http.ResponseWriter, err error) {
	if errors.Is(err, ErrNotFound) {
		http.Error(rw, "No such ticket. It may belong to another helpdesk database; the list at / shows this one's.", http.StatusNotFound)
		return
	}
	w.log.Error("helpdesk request failed", "err", err)
	http.Error(rw, "The helpdesk could not do that: "+err.Error()+". The helpdesk's log has the details; try again.", http.StatusInternalServerError)
}

func (w *web) showIndex(rw http.ResponseWriter, r *http.Request) {
	w.renderIndex(rw, r, http.StatusOK, NewTicket{Urgency: "3", Impact: "3"}, "")
}

func (w *web) renderIndex(rw http.ResponseWriter, r *http.Request, status int, form NewTicket, msg string) {
	tickets, err := w.store.Tickets(r.Context())
	if err != nil {
		w.fail(rw, err)
		return
	}
	w.render(rw, w.index, "layout", status, indexPage{Title: "Tickets", Form: form, Error: msg, Tickets: tickets})
}

func (w *web) showRows(rw http.ResponseWriter, r *http.Request) {
	tickets, err := w.store.Tickets(r.Context())
	if err != nil {
		w.fail(rw, err)
		return
	}
	w.render(rw, w.index, "rows", http.StatusOK, tickets)
}

func (w *web) create(rw http.ResponseWriter, r *http.Request) {
	form := NewTicket{Title: r.PostFormValue("title"), Description: r.PostFormValue("description"),
		Urgency: r.PostFormValue("urgency"), Impact: r.PostFormValue("impact")}
	t, err := w.store.Create(r.Context(), form)
	var invalid ValidationError
	if errors.As(err, &invalid) {
		w.renderIndex(rw, r, http.StatusUnprocessableEntity, form, invalid.Error())
		return
	}
	if err != nil {
		w.fail(rw, err)
		return
	}
	w.kick()
	http.Redirect(rw, r, "/tickets/"+t.ExternalID, http.StatusSeeOther)
}

func (w *web) ticketData(r *http.Request) (ticketPage, error) {
	t, changes, comments, err := w.store.Ticket(r.Context(), r.PathValue("id"))
	if err != nil {
		return ticketPage{}, err
	}
	return ticketPage{Title: t.Title, Ticket: t, Changes: changes, Comments: comments}, nil
}

func (w *web) showTicket(rw http.ResponseWriter, r *http.Request) {
	p, err := w.ticketData(r)
	if err != nil {
		w.fail(rw, err)
		return
	}
	w.render(rw, w.page, "layout", http.StatusOK, p)
}

func (w *web) showDetail(rw http.ResponseWriter, r *http.Request) {
	p, err := w.ticketData(r)
	if err != nil {
		w.fail(rw, err)
		return
	}
	w.render(rw, w.page, "detail", http.StatusOK, p)
}

// edit sends the fields the person changed: each compared with the value
// the form showed (base_<field>), not with the ticket now, so a value
// ServiceNow changed since the page loaded is not put back.
func (w *web) edit(rw http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(rw, "The form could not be read: "+err.Error()+". Reload the page and try again.", http.StatusBadRequest)
		return
	}
	p := Patch{Fields: map[string]string{}}
	for _, f := range syncedFields {
		if v, ok := r.PostForm[f]; ok && len(v) > 0 && v[0] != r.PostForm.Get("base_"+f) {
			p.Fields[f] = v[0]
		}
	}
	w.change(rw, r, p, KindEdit)
}

func (w *web) comment(rw http.ResponseWriter, r *http.Request) {
	w.change(rw, r, Patch{Comment: r.PostFormValue("comment")}, KindComment)
}

func (w *web) resolve(rw http.ResponseWriter, r *http.Request) {
	w.change(rw, r, Patch{Fields: map[string]string{"status": StatusResolved}, Comment: r.PostFormValue("note")}, KindResolve)
}

func (w *web) change(rw http.ResponseWriter, r *http.Request, p Patch, kind string) {
	id := r.PathValue("id")
	changed, err := w.store.Update(r.Context(), id, p, kind)
	var invalid ValidationError
	if errors.As(err, &invalid) {
		data, derr := w.ticketData(r)
		if derr != nil {
			w.fail(rw, derr)
			return
		}
		data.Error = invalid.Error()
		w.render(rw, w.page, "layout", http.StatusUnprocessableEntity, data)
		return
	}
	if err != nil {
		w.fail(rw, err)
		return
	}
	if changed {
		w.kick()
	}
	http.Redirect(rw, r, "/tickets/"+id, http.StatusSeeOther)
}

// outcomeText is a result's outcome for the log.
func outcomeText(r wire.Result) string {
	if r.Error != nil && r.Error.Message != "" {
		return r.Outcome + ": " + r.Error.Message
	}
	return r.Outcome
}
