// Package console serves the bridge's admin pages on a listener of their
// own (BRIDGE_ADMIN_LISTEN, never the webhook port): an overview of streams,
// consumer lag, throughput and every replica's state, the dead letters with
// retry and a confirmed purge, and a record's trace. Pages are rendered on
// the server from embedded templates and assets; every action needs the
// bearer token (when configured) and a CSRF token, and is logged with who
// did it.
package console

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/nowbridge/nowbridge/internal/console/tokens"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Config is what the console reads and whom it lets in.
type Config struct {
	JS     jetstream.JetStream
	Tables []string // the synced tables whose reconcile passes the overview shows
	// Tokens are BRIDGE_ADMIN_TOKEN's; empty: no token is asked (the
	// configuration allows that only on a loopback listener).
	Tokens tokens.Set
	// Trace finds a record's timeline; nil: the trace page says it is not
	// available.
	Trace Tracer
	// Replica is this process's id in the status reports (status.DefaultID).
	Replica string
	// SampleEvery is how often the status is sampled (default 5s), Samples
	// how many samples the sparklines keep (default 120: 10 minutes).
	SampleEvery time.Duration
	Samples     int
	// Registerer takes the sampled gauges (stream sizes, consumer lag,
	// dead letters); nil: none.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Console is the admin HTTP handler and its status sampler.
type Console struct {
	cfg     Config
	log     *slog.Logger
	auth    *auth
	sampler *Sampler
	pages   map[string]*template.Template
	static  http.Handler
	mux     *http.ServeMux
	origin  *http.CrossOriginProtection
	logins  *rate.Limiter
}

// New builds the console; it registers the sampled gauges on
// cfg.Registerer.
func New(cfg Config) (*Console, error) {
	if cfg.JS == nil {
		return nil, errors.New("console: no JetStream")
	}
	if cfg.SampleEvery <= 0 {
		cfg.SampleEvery = 5 * time.Second
	}
	if cfg.Samples <= 1 {
		cfg.Samples = 120
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Console{
		cfg:     cfg,
		log:     log,
		auth:    newAuth(cfg.Tokens, cfg.Now),
		sampler: newSampler(cfg.JS, cfg.Tables, cfg.SampleEvery, cfg.Samples, log),
		origin:  http.NewCrossOriginProtection(),
		// Tokens are long and random; this only keeps a guesser slow.
		logins: rate.NewLimiter(rate.Every(time.Second), 10),
	}
	var err error
	if c.pages, err = parsePages(); err != nil {
		return nil, err
	}
	sub, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, err
	}
	c.static = http.StripPrefix("/static/", staticHandler(sub))
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(c.sampler); err != nil {
			return nil, fmt.Errorf("console: register the sampled gauges: %w", err)
		}
	}
	c.routes()
	return c, nil
}

// Run samples the status until ctx ends and, with ln, serves the console
// on it; at the end it gives requests in flight up to grace to finish.
func (c *Console) Run(ctx context.Context, ln net.Listener, grace time.Duration) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.sampler.Run(gctx) })
	if ln != nil {
		srv := &http.Server{
			Handler:           c,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      60 * time.Second,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          slog.NewLogLogger(c.log.Handler(), slog.LevelWarn),
		}
		g.Go(func() error {
			err := srv.Serve(ln)
			if errors.Is(err, http.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("console: %w", err)
		})
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				_ = srv.Close()
			}
			return nil
		})
		c.log.Info("console listening", "addr", ln.Addr().String(), "url", "http://"+ln.Addr().String()+"/",
			"token_required", c.auth.required())
	}
	return g.Wait()
}

// ServeHTTP secures every answer, lets the static assets and the login
// through, asks for the token elsewhere, and checks the origin and the CSRF
// token of every action before it reaches its handler.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	secureHeaders(w.Header())
	if strings.HasPrefix(r.URL.Path, "/static/") {
		c.static.ServeHTTP(w, r) // the stylesheet and script: no data in them
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	if r.URL.Path == "/login" {
		c.login(w, r)
		return
	}
	p, ok := c.auth.authenticate(r)
	if !ok {
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			c.loginPage(w, r, http.StatusUnauthorized, "", r.URL.RequestURI())
			return
		}
		c.log.Warn("console: action refused: no valid token", "client", r.RemoteAddr, "method", r.Method, "path", r.URL.Path)
		http.Error(w, "401 unauthorized: this console needs its token (BRIDGE_ADMIN_TOKEN): log in at /login, or send Authorization: Bearer", http.StatusUnauthorized)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		err := c.origin.Check(r)
		if err == nil {
			err = checkCSRF(r, p)
		}
		if err != nil {
			c.log.Warn("console: action refused", "who", p.who(r), "client", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "reason", err.Error())
			http.Error(w, "403 forbidden: "+err.Error(), http.StatusForbidden)
			return
		}
	}
	c.mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
}

type principalKey struct{}

func principalOf(r *http.Request) principal {
	p, _ := r.Context().Value(principalKey{}).(principal)
	return p
}

// secureHeaders: no framing, no inline script or style, no sniffing, no
// referrer leaving with a record's number in it.
func secureHeaders(h http.Header) {
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
}

// staticHandler serves the embedded assets, revalidated by their ETag.
func staticHandler(files fs.FS) http.Handler {
	fsrv := http.FileServerFS(files)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		if b, err := fs.ReadFile(files, r.URL.Path); err == nil {
			w.Header().Set("ETag", etag(b))
		}
		fsrv.ServeHTTP(w, r)
	})
}

// login answers the login form: the token, checked in constant time and
// rate-limited, becomes a session cookie.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if !c.auth.required() {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	next := localPath(r.FormValue("next"))
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		c.loginPage(w, r, http.StatusOK, "", next)
		return
	case http.MethodPost:
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "405 method not allowed", http.StatusMethodNotAllowed)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	if err := c.origin.Check(r); err != nil {
		c.log.Warn("console: login refused", "client", r.RemoteAddr, "reason", err.Error())
		http.Error(w, "403 forbidden: "+err.Error(), http.StatusForbidden)
		return
	}
	if !c.logins.Allow() {
		w.Header().Set("Retry-After", "1")
		c.loginPage(w, r, http.StatusTooManyRequests, "Too many login attempts; wait a moment.", next)
		return
	}
	t, ok := c.auth.tokens.Match(strings.TrimSpace(r.PostFormValue("token")))
	if !ok {
		c.log.Warn("console: login failed: unknown token", "client", r.RemoteAddr)
		c.loginPage(w, r, http.StatusUnauthorized, "That token is not one of BRIDGE_ADMIN_TOKEN's.", next)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: c.auth.newSession(t), Path: "/", HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode, MaxAge: int(sessionTTL / time.Second)})
	c.log.Info("console: logged in", "who", t.Identity(), "client", r.RemoteAddr)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// localPath keeps a redirect target on this console.
func localPath(s string) string {
	if !strings.HasPrefix(s, "/") || strings.HasPrefix(s, "//") || strings.HasPrefix(s, "/\\") || strings.ContainsAny(s, "\r\n") {
		return "/"
	}
	return s
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request, status int, msg, next string) {
	c.renderPage(w, r, status, "login", principal{}, view{Title: "Log in", Data: loginView{Error: msg, Next: localPath(next)}})
}

// action logs what a principal did: who, from where, what, and how it went
// (the time is the log record's).
func (c *Console) action(r *http.Request, what string, err error, attrs ...any) {
	p := principalOf(r)
	attrs = append([]any{"who", p.who(r), "client", r.RemoteAddr, "action", what}, attrs...)
	if err != nil {
		c.log.Warn("console action failed", append(attrs, "err", err.Error())...)
		return
	}
	c.log.Info("console action", attrs...)
}

// renderPage renders a page into a buffer (a template error is a clean
// 500, not half a page) with the CSRF token of p.
func (c *Console) renderPage(w http.ResponseWriter, r *http.Request, status int, page string, p principal, v view) {
	t, ok := c.pages[page]
	if !ok {
		http.Error(w, "500 no such page", http.StatusInternalServerError)
		return
	}
	v.Page = page
	v.Replica = c.cfg.Replica
	v.TokenRequired = c.auth.required()
	v.Who = p.id
	if page != "login" {
		v.CSRF = csrfToken(w, r, p)
		v.Flash = takeFlash(w, r)
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", v); err != nil {
		c.log.Error("console: render", "page", page, "err", err)
		http.Error(w, "500 the page could not be rendered; see the bridge's log", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// view is what every page's layout gets.
type view struct {
	Title, Page, Replica string
	Who                  string // the token's identity; "" without tokens
	TokenRequired        bool
	CSRF                 string
	Flash                string
	Data                 any
}

type loginView struct{ Error, Next string }
