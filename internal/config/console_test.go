package config

import (
	"strings"
	"testing"

	"github.com/nowbridge/nowbridge/internal/console/tokens"
)

func TestValidate_ConsoleListenerAndTokens(t *testing.T) {
	const tok = "0123456789abcdef0123456789abcdef"
	cases := []struct {
		name string
		env  map[string]string
		want string // "" valid; else the start of the one problem
	}{
		{"default: loopback, no token", nil, ""},
		{"off", map[string]string{"BRIDGE_ADMIN_LISTEN": "off"}, ""},
		{"every interface without a token", map[string]string{"BRIDGE_ADMIN_LISTEN": ":8090"},
			"BRIDGE_ADMIN_TOKEN: required when BRIDGE_ADMIN_LISTEN (:8090) is not a loopback address"},
		{"a routable address without a token", map[string]string{"BRIDGE_ADMIN_LISTEN": "10.1.2.3:8090"},
			"BRIDGE_ADMIN_TOKEN: required when BRIDGE_ADMIN_LISTEN (10.1.2.3:8090)"},
		{"every interface with a token", map[string]string{"BRIDGE_ADMIN_LISTEN": "0.0.0.0:8090", "BRIDGE_ADMIN_TOKEN": tok}, ""},
		{"localhost and IPv6 loopback need none", map[string]string{"BRIDGE_ADMIN_LISTEN": "[::1]:8090"}, ""},
		{"the webhook port", map[string]string{"BRIDGE_ADMIN_LISTEN": "127.0.0.1:8080"},
			"BRIDGE_ADMIN_LISTEN: 127.0.0.1:8080 shares BRIDGE_LISTEN's port 8080"},
		{"not host:port", map[string]string{"BRIDGE_ADMIN_LISTEN": "8090"}, `BRIDGE_ADMIN_LISTEN: "8090" is not host:port (or off)`},
		{"a short token", map[string]string{"BRIDGE_ADMIN_TOKEN": "alice:short"},
			"BRIDGE_ADMIN_TOKEN: entry 1: a token must be at least 16 characters"},
		{"a bad name", map[string]string{"BRIDGE_ADMIN_TOKEN": "al ice:" + tok},
			"BRIDGE_ADMIN_TOKEN: entry 1: the name before ':' must be"},
		{"a name twice", map[string]string{"BRIDGE_ADMIN_TOKEN": "bob:" + tok + ",bob:" + tok + "x"},
			"BRIDGE_ADMIN_TOKEN: entry 2: bob is named twice"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := load(t, c.env)
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("want valid, got %v", err)
			case c.want != "" && (err == nil || len(lines(err)) != 1 || !strings.HasPrefix(err.Error(), c.want)):
				t.Fatalf("got %v, want one problem starting %q", err, c.want)
			}
			if err != nil && strings.Contains(err.Error(), "short") || err != nil && strings.Contains(err.Error(), tok) {
				t.Fatalf("the error shows the token: %v", err)
			}
		})
	}
}

func TestLoad_AdminTokenFromFileNamesItsHolders(t *testing.T) {
	path := writeFile(t, "admin", "alice:0123456789abcdef0123,fedcba9876543210fedc\n")
	cfg, err := load(t, map[string]string{"BRIDGE_ADMIN_TOKEN_FILE": path, "BRIDGE_ADMIN_LISTEN": ":8090"})
	if err != nil {
		t.Fatal(err)
	}
	set, err := tokens.Parse(cfg.AdminToken.Reveal())
	if err != nil || len(set) != 2 {
		t.Fatalf("tokens from the file: %d, %v; want 2", len(set), err)
	}
	if got, ok := set.Match("0123456789abcdef0123"); !ok || got.Identity() != "alice" {
		t.Errorf("alice's token matched %q %v, want identity alice", got.Identity(), ok)
	}
	if got, ok := set.Match("fedcba9876543210fedc"); !ok || !strings.HasPrefix(got.Identity(), "token:") || len(got.Identity()) != len("token:")+8 {
		t.Errorf("the unnamed token's identity is %q, want token: and 8 hex digits of its hash", got.Identity())
	}
	if _, ok := set.Match("0123456789abcdef012"); ok {
		t.Error("a prefix of a token matched")
	}
	if strings.Contains(cfg.AdminToken.String(), "alice") {
		t.Error("the token prints")
	}
}
