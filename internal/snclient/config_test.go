package snclient

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestSecret_NeverPrinted(t *testing.T) {
	cfg := Config{InstanceURL: "https://dev1.service-now.com", ClientID: "id", ClientSecret: "hunter2-secret"}
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("config", "secret", cfg.ClientSecret, "cfg", cfg)
	b, _ := json.Marshal(cfg)
	for _, s := range []string{
		fmt.Sprint(cfg.ClientSecret), fmt.Sprintf("%v %+v %#v %s", cfg, cfg, cfg, cfg.ClientSecret), logs.String(), string(b),
	} {
		if strings.Contains(s, "hunter2") {
			t.Errorf("secret printed: %s", s)
		}
	}
	if cfg.ClientSecret.Reveal() != "hunter2-secret" {
		t.Error("Reveal lost the value")
	}
}

func TestConfig_Validate(t *testing.T) {
	good := Config{InstanceURL: "https://dev1.service-now.com", ClientID: "id", ClientSecret: "s"}
	tests := []struct {
		name string
		mod  func(*Config)
		want string // "" for valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"trailing slash", func(c *Config) { c.InstanceURL += "/" }, ""},
		{"no url", func(c *Config) { c.InstanceURL = "" }, "BRIDGE_SN_INSTANCE_URL"},
		{"not a url", func(c *Config) { c.InstanceURL = "dev1.service-now.com" }, "not an http(s) URL"},
		{"path", func(c *Config) { c.InstanceURL += "/api/now" }, "base URL only"},
		{"no id", func(c *Config) { c.ClientID = "" }, "BRIDGE_SN_CLIENT_ID"},
		{"no secret", func(c *Config) { c.ClientSecret = "" }, "BRIDGE_SN_CLIENT_SECRET"},
		{"api version", func(c *Config) { c.TableAPI = "v3" }, "v1 or v2"},
		{"page size", func(c *Config) { c.PageSize = 20000 }, "page size"},
		{"negative", func(c *Config) { c.RetryMax = -time.Second }, "retry max is negative"},
		{"rate", func(c *Config) { c.RateLimit = -1 }, "rate limit"},
		{"known fields", func(c *Config) { c.KnownFields = map[string][]string{"incident": {"Bad Name"}} }, "not a field name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.mod(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate() = %v, want an error mentioning %q", err, tt.want)
			}
			if tt.want != "" {
				if _, err := New(c); err == nil {
					t.Error("New accepted an invalid config")
				}
			}
		})
	}
	d := good.withDefaults()
	if d.TokenMinValidity != 30*time.Second || d.RefreshLeadMin != time.Minute || d.RefreshLeadMax != 3*time.Minute || d.PageSize != 1000 || d.TableAPI != TableAPIv1 {
		t.Errorf("defaults = %+v", d)
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		h    map[string]string
		want time.Duration
	}{
		{"seconds", map[string]string{"Retry-After": "3"}, 3 * time.Second},
		{"http date", map[string]string{"Retry-After": now.Add(5 * time.Second).Format(http.TimeFormat)}, 5 * time.Second},
		{"reset", map[string]string{"X-RateLimit-Reset": fmt.Sprint(now.Add(42 * time.Second).Unix())}, 42 * time.Second},
		{"retry-after wins", map[string]string{"Retry-After": "2", "X-RateLimit-Reset": fmt.Sprint(now.Add(time.Hour).Unix())}, 2 * time.Second},
		{"reset in the past", map[string]string{"X-RateLimit-Reset": fmt.Sprint(now.Add(-time.Hour).Unix())}, 0},
		{"garbage", map[string]string{"Retry-After": "soon", "X-RateLimit-Reset": "later"}, 0},
		{"negative", map[string]string{"Retry-After": "-4"}, 0},
		{"none", nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tt.h {
				h.Set(k, v)
			}
			if got := retryAfter(h, now); got != tt.want {
				t.Errorf("retryAfter = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFullJitter_BoundedAndGrowing(t *testing.T) {
	b := newFullJitter(10*time.Millisecond, 80*time.Millisecond)
	ceil := []time.Duration{10, 20, 40, 80, 80, 80}
	for i, c := range ceil {
		if d := b.NextBackOff(); d < 0 || d > c*time.Millisecond {
			t.Errorf("wait %d = %v, want within [0, %v]", i, d, c*time.Millisecond)
		}
	}
	b.Reset()
	if d := b.NextBackOff(); d > 10*time.Millisecond {
		t.Errorf("after Reset: %v", d)
	}
}
