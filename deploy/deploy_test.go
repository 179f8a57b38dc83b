package deploy_test

// The deployment files are checked here by parsing them, since containers
// cannot run where the tests run: deploy/kubernetes (kubernetes_test.go),
// deploy/compose (compose_test.go), the Dockerfile and .dockerignore
// (dockerfile_test.go). Environment names are held to config.EnvNames, the
// variables the bridge reads.

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/nowbridge/nowbridge/internal/config"
)

// decodeAll parses every YAML document of a file, failing on a syntax error.
func decodeAll(t *testing.T, file string) []*yaml.Node {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []*yaml.Node
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: not YAML: %v", file, err)
		}
		if len(n.Content) > 0 && n.Content[0].Kind != 0 {
			docs = append(docs, &n)
		}
	}
}

// listenPort is the port of a listen address such as ":8080".
func listenPort(t *testing.T, listen string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(listen)
	n, perr := strconv.Atoi(p)
	if err != nil || perr != nil {
		t.Fatalf("listen address %q is not host:port", listen)
	}
	return n
}

// checkEnv holds one container's environment to the configuration table:
// every name is one Load reads, no secret is a plain value (except a NATS
// URL without credentials), and every *_FILE names a file that mounted(file)
// says is there.
func checkEnv(t *testing.T, where string, env map[string]string, mounted func(file string) error) {
	t.Helper()
	names := config.EnvNames()
	secrets := map[string]bool{}
	for _, s := range config.Settings() {
		secrets[s.Env] = s.Secret
	}
	if len(env) == 0 {
		t.Errorf("%s: sets no environment", where)
	}
	for _, name := range slices.Sorted(maps.Keys(env)) {
		value := env[name]
		if !slices.Contains(names, name) {
			t.Errorf("%s: %s is no setting of the bridge (config.EnvNames); it would be ignored", where, name)
			continue
		}
		if secrets[name] {
			if name == "BRIDGE_NATS_URL" && !urlsHaveCredentials(value) {
				continue
			}
			t.Errorf("%s: secret %s is set as a value; give %s_FILE naming a mounted file", where, name, name)
		}
		if base, ok := strings.CutSuffix(name, "_FILE"); ok {
			if _, dup := env[base]; dup {
				t.Errorf("%s: both %s and %s are set", where, base, name)
			}
			if !path.IsAbs(value) {
				t.Errorf("%s: %s=%q is not an absolute path", where, name, value)
			} else if err := mounted(value); err != nil {
				t.Errorf("%s: %s=%s: %v", where, name, value, err)
			}
		}
	}
}

// urlsHaveCredentials reports whether a URL of a comma-separated list
// carries user information (or does not parse, so might).
func urlsHaveCredentials(list string) bool {
	for part := range strings.SplitSeq(list, ",") {
		u, err := url.Parse(strings.TrimSpace(part))
		if err != nil || u.User != nil {
			return true
		}
	}
	return false
}

// flagValue is the value after flag in args ("--flag v" or "--flag=v").
func flagValue(args []string, flag string) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	return ""
}
