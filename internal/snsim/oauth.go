package snsim

import (
	"crypto/subtle"
	"encoding/json"
	"mime"
	"net/http"
	"strings"
	"time"
)

type tokenInfo struct {
	user    string
	expires time.Time
}

// The token endpoint answers every failure with the same body, whatever the
// cause (wrong secret, grant disabled, no application user).
const tokenFailure = `{"error_description":"access_denied","error":"server_error"}`

// wwwAuthenticate is the challenge every 401 of the instance carries.
const wwwAuthenticate = `BASIC realm="Service-now"`

func (s *Server) tokenFail(w http.ResponseWriter, why string) {
	s.log.Info("snsim token request refused", "reason", why)
	w.Header().Set("WWW-Authenticate", wwwAuthenticate)
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.WriteHeader(http.StatusUnauthorized)
	_, _ = w.Write([]byte(tokenFailure))
}

// handleToken implements POST /oauth_token.do for client credentials.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	s.knobMu.Lock()
	s.tokReq++
	mode, ttl := s.oauth, s.ttl
	s.knobMu.Unlock()
	if r.Method != http.MethodPost {
		s.tokenFail(w, "method "+r.Method)
		return
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/x-www-form-urlencoded" {
		s.tokenFail(w, "body is not form-encoded (content type "+mt+")")
		return
	}
	if err := r.ParseForm(); err != nil {
		s.tokenFail(w, "form does not parse")
		return
	}
	f := r.PostForm
	if f.Get("grant_type") != "client_credentials" {
		s.tokenFail(w, "grant_type "+f.Get("grant_type")+" is not client_credentials")
		return
	}
	id, secret := f.Get("client_id"), f.Get("client_secret")
	if id == "" || secret == "" {
		// ServiceNow documents credentials in the body; Basic client
		// authentication is not documented to work, so it does not here.
		s.tokenFail(w, "client_id/client_secret missing from the form body")
		return
	}
	if subtle.ConstantTimeCompare([]byte(id), []byte(s.cfg.ClientID)) != 1 ||
		subtle.ConstantTimeCompare([]byte(secret), []byte(s.cfg.ClientSecret)) != 1 {
		s.tokenFail(w, "client id or secret wrong")
		return
	}
	switch mode {
	case OAuthGrantDisabled:
		s.tokenFail(w, "client credentials grant disabled")
		return
	case OAuthNoAppUser:
		s.tokenFail(w, "no OAuth application user on the registry record")
		return
	}
	tok := s.randToken()
	s.knobMu.Lock()
	user := s.cfg.AppUser
	if mode == OAuthTokenNotAuthenticated {
		user = "" // issued, but bound to no user: the API rejects it
	}
	s.tokens[tok] = tokenInfo{user: user, expires: s.now().Add(ttl)}
	s.tokIss++
	s.knobMu.Unlock()
	body := struct {
		AccessToken string `json:"access_token"`
		Scope       string `json:"scope"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int64  `json:"expires_in"`
	}{tok, "", "Bearer", int64(ttl / time.Second)}
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(body)
}

// randToken returns a token shaped like ServiceNow's (86 URL-safe characters).
func (s *Server) randToken() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	s.knobMu.Lock()
	defer s.knobMu.Unlock()
	b := make([]byte, 86)
	for i := range b {
		b[i] = alphabet[s.rng.IntN(len(alphabet))]
	}
	return string(b)
}

// authenticate returns the API user of a request, or "" after answering 401.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) string {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || tok == "" {
		notAuthenticated(w)
		return ""
	}
	s.knobMu.Lock()
	info, found := s.tokens[strings.TrimSpace(tok)]
	s.knobMu.Unlock()
	if !found || info.user == "" || !s.now().Before(info.expires) {
		notAuthenticated(w)
		return ""
	}
	return info.user
}

func notAuthenticated(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", wwwAuthenticate)
	writeError(w, http.StatusUnauthorized, "User Not Authenticated", "Required to provide Auth information")
}
