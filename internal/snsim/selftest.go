package snsim

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// The update set's self-test: the Scripted REST API nowbridge with its one
// resource, POST /api/<namespace>/nowbridge/selftest, which runs
// NowbridgeWebhook.selfTest() (servicenow/business_rules/NowbridgeWebhook.js)
// and answers {"result": events.SelfTestOutcome}. The simulator signs with
// what the property yields, exactly as the script does, and posts to the
// business rules' first webhook target. Knobs emulate what cannot be known
// about a real instance without trying: the property's value as the script
// reads it, the charset generateMac signs in, an unreachable bridge, the
// namespace and who may see the API's record.

// SelfTestSecret selects what gs.getProperty('nowbridge.webhook_secret')
// returns to the self-test.
type SelfTestSecret int

const (
	// SelfTestSecretConfigured: the first webhook target's secrets, as
	// whsec_ values, comma-separated (the property set right).
	SelfTestSecretConfigured SelfTestSecret = iota
	// SelfTestSecretOther: a whsec_ secret the bridge does not have.
	SelfTestSecretOther
	// SelfTestSecretEncrypted: the stored, encrypted form of the password2
	// value (base64 without the whsec_ prefix), which is what the script
	// gets if gs.getProperty does not decrypt password2 properties.
	SelfTestSecretEncrypted
	// SelfTestSecretEmpty: the property is empty.
	SelfTestSecretEmpty
)

// SelfTestOptions are the self-test resource's knobs. The zero value is a
// healthy instance with the update set installed under the shipped
// namespace and the role granted.
type SelfTestOptions struct {
	// Missing: the update set's Scripted REST API is not installed (the
	// path answers 400 "Requested URI does not represent any resource").
	Missing bool
	// Namespace of the API (default events.SelfTestNamespace); an instance
	// that shows its company code instead has a different base path.
	Namespace string
	// DefinitionReadable lets the integration user read the API's
	// sys_ws_definition row (web_service_admin or admin). Without it the
	// table answers 200 with no rows and X-Total-Count 1, as ACLs do.
	DefinitionReadable bool
	// NoRole: the integration user lacks nowbridge_integration (403).
	NoRole bool
	// Secret is what the property yields to the script.
	Secret SelfTestSecret
	// MacCharset is the charset generateMac signs the text in: "" or
	// "UTF-8", or one of events.OtherCharsets.
	MacCharset string
	// Unreachable: the outbound call fails without an answer.
	Unreachable bool
	// WebhookURL is nowbridge.webhook_url; "" takes the first webhook
	// target's URL (none: the property is empty).
	WebhookURL string
}

func (o SelfTestOptions) validate() error {
	if o.MacCharset != "" {
		if _, ok := events.EncodeCharset("", o.MacCharset); !ok {
			return fmt.Errorf("snsim: self-test charset %q: want UTF-8 or one of %s", o.MacCharset, strings.Join(events.OtherCharsets, ", "))
		}
	}
	if o.Namespace != "" && !namespaceRe.MatchString(o.Namespace) {
		return fmt.Errorf("snsim: self-test namespace %q: want letters, digits and _", o.Namespace)
	}
	return nil
}

// selfTestState is the Server's self-test knobs and counter.
type selfTestState struct {
	mu    sync.Mutex
	opts  SelfTestOptions
	calls int
}

// SetSelfTest replaces the self-test knobs.
func (s *Server) SetSelfTest(o SelfTestOptions) error {
	if err := o.validate(); err != nil {
		return err
	}
	s.selftest.mu.Lock()
	s.selftest.opts = o
	s.selftest.mu.Unlock()
	return nil
}

// SelfTestCalls counts calls of the self-test resource that reached its
// script (authenticated, authorised).
func (s *Server) SelfTestCalls() int {
	s.selftest.mu.Lock()
	defer s.selftest.mu.Unlock()
	return s.selftest.calls
}

func (s *Server) selfTestOptions() SelfTestOptions {
	s.selftest.mu.Lock()
	defer s.selftest.mu.Unlock()
	o := s.selftest.opts
	if o.Namespace == "" {
		o.Namespace = events.SelfTestNamespace
	}
	return o
}

var (
	namespaceRe    = regexp.MustCompile(`^[A-Za-z0-9_]+$`)
	selfTestPathRe = regexp.MustCompile(`^/api/([^/]+)/` + events.SelfTestAPIID + events.SelfTestResource + `/?$`)
)

// isSelfTestRoute reports whether the request is the self-test's: its
// resource under any namespace, or a Table API read of sys_ws_definition
// (the API's record, which the simulator keeps outside its tables).
func isSelfTestRoute(p string) bool {
	if selfTestPathRe.MatchString(p) && !strings.HasPrefix(p, "/api/now/") {
		return true
	}
	switch strings.TrimSuffix(p, "/") {
	case "/api/now/table/sys_ws_definition", "/api/now/v1/table/sys_ws_definition", "/api/now/v2/table/sys_ws_definition":
		return true
	}
	return false
}

func (s *Server) handleSelfTestRoute(w http.ResponseWriter, r *http.Request) {
	if strings.Contains(r.URL.Path, "/table/sys_ws_definition") {
		s.listWSDefinition(w, r)
		return
	}
	o := s.selfTestOptions()
	m := selfTestPathRe.FindStringSubmatch(r.URL.Path)
	if o.Missing || m == nil || m[1] != o.Namespace {
		writeError(w, http.StatusBadRequest, "Requested URI does not represent any resource", "")
		return
	}
	if r.Method != http.MethodPost {
		writeError(w, http.StatusMethodNotAllowed, "Method not Supported", r.Method+" method not supported for API")
		return
	}
	if s.authenticate(w, r) == "" {
		return
	}
	if o.NoRole {
		writeError(w, http.StatusForbidden, "User Not Authorized", "Not permitted")
		return
	}
	s.selftest.mu.Lock()
	s.selftest.calls++
	s.selftest.mu.Unlock()
	out := s.runSelfTest(r.Context(), o)
	b, err := json.Marshal(struct {
		Result events.SelfTestOutcome `json:"result"`
	}{out})
	if err != nil {
		writeError(w, http.StatusInternalServerError, "Internal error", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, b)
}

// listWSDefinition serves GET sys_ws_definition with the API's one row,
// to a user who may read it; filters on service_id and active only.
func (s *Server) listWSDefinition(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		writeError(w, http.StatusMethodNotAllowed, "Method not Supported", r.Method+" method not supported for API")
		return
	}
	if s.authenticate(w, r) == "" {
		return
	}
	o := s.selfTestOptions()
	var rows []map[string]string
	if !o.Missing {
		row := map[string]string{
			"sys_id":     "57603bccd56eabf763c6546c271d97a1",
			"name":       "nowbridge",
			"service_id": events.SelfTestAPIID,
			"namespace":  o.Namespace,
			"base_uri":   events.SelfTestBasePath(o.Namespace),
			"active":     "true",
		}
		match := true
		for _, clause := range strings.Split(r.URL.Query().Get("sysparm_query"), "^") {
			if field, want, ok := strings.Cut(clause, "="); ok && (field == "service_id" || field == "active") && row[field] != want {
				match = false
			}
		}
		if match {
			rows = append(rows, row)
		}
	}
	total := len(rows)
	if !o.DefinitionReadable {
		rows = nil // the ACL hides the row; the count still includes it
	}
	b, err := json.Marshal(map[string]any{"result": append([]map[string]string{}, rows...)})
	if err != nil {
		writeError(w, http.StatusInternalServerError, "Internal error", err.Error())
		return
	}
	w.Header().Set("X-Total-Count", strconv.Itoa(total))
	writeJSON(w, http.StatusOK, b)
}

// selfTestKey is one usable entry of the property, as _keyEntries parses it.
type selfTestKey struct {
	key      string // base64
	prefixed bool
}

var base64Re = regexp.MustCompile(`^[A-Za-z0-9+/]+=*$`)

func parseKeyEntries(prop string) []selfTestKey {
	var out []selfTestKey
	for _, part := range strings.Split(prop, ",") {
		v := strings.TrimSpace(part)
		k, prefixed := strings.CutPrefix(v, "whsec_")
		if k != "" && base64Re.MatchString(k) {
			out = append(out, selfTestKey{key: k, prefixed: prefixed})
		}
	}
	return out
}

// property is nowbridge.webhook_secret as the script reads it.
func (s *Server) selfTestProperty(o SelfTestOptions, targets []WebhookTarget) string {
	switch o.Secret {
	case SelfTestSecretEmpty:
		return ""
	case SelfTestSecretOther:
		h := sha256.Sum256([]byte("snsim: a secret the bridge does not have"))
		return webhook.NewSecret(h[:]).Encoded()
	}
	var list []string
	if len(targets) > 0 {
		for _, sec := range targets[0].Secrets {
			list = append(list, sec.Encoded())
		}
	}
	clear := strings.Join(list, ",")
	if o.Secret == SelfTestSecretEncrypted && clear != "" {
		// A stand-in for the platform's encryption: IV plus a ciphertext
		// as long as the padded value, base64, no prefix.
		iv := sha256.Sum256([]byte("snsim iv " + s.cfg.InstanceName))
		out := append([]byte(nil), iv[:16]...)
		for i := 0; i < (len(clear)/16+1)*16; i++ {
			h := sha256.Sum256(append([]byte(clear), byte(i)))
			out = append(out, h[0])
		}
		return base64.StdEncoding.EncodeToString(out)
	}
	return clear
}

// runSelfTest is NowbridgeWebhook.selfTest() on the simulated instance.
func (s *Server) runSelfTest(ctx context.Context, o SelfTestOptions) (out events.SelfTestOutcome) {
	d := s.hooks
	d.mu.Lock()
	targets := append([]WebhookTarget(nil), d.targets...)
	d.mu.Unlock()
	out = events.SelfTestOutcome{Stage: events.SelfTestStageConfig, ContentType: "application/json; charset=utf-8"}
	url := o.WebhookURL
	if url == "" && len(targets) > 0 {
		url = targets[0].URL
	}
	out.WebhookURL = url
	if url == "" {
		out.Error = "property nowbridge.webhook_url is empty: set it to the bridge's https://<bridge>/webhooks/servicenow"
		return out
	}
	prop := s.selfTestProperty(o, targets)
	entries := parseKeyEntries(prop)
	out.Keys = len(entries)
	if len(entries) == 0 {
		if prop == "" {
			out.Error = "property nowbridge.webhook_secret is empty: put one of the bridge's BRIDGE_WEBHOOK_SECRETS (whsec_<base64>) in it"
		} else {
			out.Error = "property nowbridge.webhook_secret is set but yields no whsec_<base64> value: gs.getProperty may be returning the encrypted form of the password2 property; re-enter the secret"
		}
		return out
	}
	ev := events.SelfTestEvent{SelfTest: true, Instance: s.cfg.InstanceName, SentBy: s.cfg.AppUser, Text: events.SelfTestText}
	for _, e := range entries {
		ev.Keys = append(ev.Keys, events.SelfTestKey{
			Prefixed: e.prefixed,
			KeyBytes: len(strings.TrimRight(e.key, "=")) * 3 / 4,
			Check:    s.generateMac(e.key, events.SelfTestKeyCheckData, "")[:8], // a MAC's base64 is 44 characters
		})
	}
	body := events.EncodeSelfTestBody(&ev)
	id := events.SelfTestIDPrefix + s.randHex(32)
	out.WebhookID = id
	out.Stage = events.SelfTestStageSend
	ts := strconv.FormatInt(s.now().Unix(), 10)
	var sigs []string
	for _, e := range entries {
		sigs = append(sigs, "v1,"+s.generateMac(e.key, id+"."+ts+"."+string(body), o.MacCharset))
	}
	start := time.Now()
	defer func() { out.ElapsedMS = time.Since(start).Milliseconds() }()
	if o.Unreachable {
		out.Error = "Request not sent to uri= " + url + " : java.net.ConnectException: Connection refused (Connection refused)"
		return out
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		out.Error = "Invalid endpoint: " + err.Error()
		return out
	}
	req.Header.Set("Content-Type", out.ContentType)
	req.Header.Set("Accept", "application/json")
	req.Header.Set(webhook.HeaderID, id)
	req.Header.Set(webhook.HeaderTimestamp, ts)
	req.Header.Set(webhook.HeaderSignature, strings.Join(sigs, " "))
	resp, err := d.client.Do(req)
	if err != nil {
		out.Error = "Request not sent to uri= " + url + " : " + err.Error()
		return out
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	out.Status = resp.StatusCode
	out.Body = string(b)
	if len([]rune(out.Body)) > 4000 {
		out.Body = string([]rune(out.Body)[:4000]) + "..."
	}
	if resp.StatusCode >= 300 {
		out.Error = fmt.Sprintf("Method failed: (%s) with code: %d", req.URL.Path, resp.StatusCode)
	}
	out.Stage = events.SelfTestStageBridge
	var answer struct {
		SelfTest  bool   `json:"selftest"`
		Result    string `json:"result"`
		Diagnosis string `json:"diagnosis"`
		Detail    any    `json:"detail"`
	}
	if err := json.Unmarshal(b, &answer); err != nil {
		out.Detail = "the answer is not JSON: is " + url + " the nowbridge receiver?"
		return out
	}
	out.Result = answer.Result
	if out.Result == "" {
		out.Result = answer.Diagnosis
	}
	if d, ok := answer.Detail.(string); ok {
		out.Detail = d
	}
	out.OK = resp.StatusCode == http.StatusAccepted && answer.SelfTest && answer.Result == events.SelfTestOK
	return out
}

// generateMac is GlideCertificateEncryption.generateMac(keyBase64,
// 'HmacSHA256', data) on a JVM that encodes data in charset ("" UTF-8).
func (s *Server) generateMac(keyBase64, data, charset string) string {
	key, err := base64.StdEncoding.DecodeString(keyBase64)
	if err != nil {
		key, _ = base64.RawStdEncoding.DecodeString(strings.TrimRight(keyBase64, "="))
	}
	if charset == "" {
		charset = events.CharsetUTF8
	}
	b, _ := events.EncodeCharset(data, charset)
	m := hmac.New(sha256.New, key)
	m.Write(b)
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}
