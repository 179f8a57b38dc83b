package deploy_test

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nowbridge/nowbridge/internal/config"
)

type dockerStage struct {
	name, from string
	lines      []string // instructions, continuation lines joined
}

func parseDockerfile(t *testing.T) []dockerStage {
	t.Helper()
	b, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var stages []dockerStage
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if more, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(more + " ")
			continue
		}
		cur.WriteString(line)
		instr := strings.Join(strings.Fields(cur.String()), " ")
		cur.Reset()
		if instr == "" {
			continue
		}
		if f := strings.Fields(instr); strings.EqualFold(f[0], "FROM") {
			var args []string
			for _, a := range f[1:] {
				if !strings.HasPrefix(a, "--") {
					args = append(args, a)
				}
			}
			st := dockerStage{from: args[0]}
			if len(args) == 3 && strings.EqualFold(args[1], "AS") {
				st.name = args[2]
			}
			stages = append(stages, st)
			continue
		}
		if len(stages) > 0 {
			stages[len(stages)-1].lines = append(stages[len(stages)-1].lines, instr)
		}
	}
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stages, want a builder and a final stage", len(stages))
	}
	return stages
}

// instr is the argument text of each instruction named in a stage.
func (s dockerStage) instr(name string) []string {
	var out []string
	for _, l := range s.lines {
		if f, rest, _ := strings.Cut(l, " "); strings.EqualFold(f, name) {
			out = append(out, rest)
		}
	}
	return out
}

func dockerfileStages(t *testing.T) []string {
	var names []string
	for _, s := range parseDockerfile(t) {
		names = append(names, s.name)
	}
	return names
}

// dockerfileEnv is the final stage's ENV key=value pairs.
func dockerfileEnv(t *testing.T) map[string]string {
	stages := parseDockerfile(t)
	env := map[string]string{}
	for _, e := range stages[len(stages)-1].instr("ENV") {
		for _, kv := range strings.Fields(e) {
			if k, v, ok := strings.Cut(kv, "="); ok {
				env[k] = v
			}
		}
	}
	return env
}

// dockerfileUser is the final stage's user id.
func dockerfileUser(t *testing.T) string {
	stages := parseDockerfile(t)
	users := stages[len(stages)-1].instr("USER")
	if len(users) == 0 {
		t.Fatal("the Dockerfile's final stage sets no USER")
	}
	u, _, _ := strings.Cut(users[len(users)-1], ":")
	return u
}

// execForm decodes a JSON exec-form argument list (["a", "b"]).
func execForm(t *testing.T, what, s string) []string {
	t.Helper()
	var args []string
	if err := json.Unmarshal([]byte(s), &args); err != nil || len(args) == 0 {
		t.Fatalf("Dockerfile %s %s: want the exec form [\"/path\", ...]: %v", what, s, err)
	}
	return args
}

func TestDockerfile_StaticNonRootImageWithHealthcheck(t *testing.T) {
	stages := parseDockerfile(t)
	final := stages[len(stages)-1]
	if !strings.HasPrefix(final.from, "gcr.io/distroless/static") && final.from != "scratch" {
		t.Errorf("the final stage is FROM %s, want distroless static or scratch", final.from)
	}
	if u := dockerfileUser(t); u == "" || u == "0" || u == "root" {
		t.Errorf("the final stage's USER is %q, want a non-root user", u)
	} else if _, err := strconv.Atoi(u); err != nil {
		t.Errorf("USER %q is not numeric: Kubernetes' runAsNonRoot cannot verify a user name", u)
	}

	// The binary: built static in a stage, copied into the final one.
	var binary, built string
	for _, c := range final.instr("COPY") {
		if f := strings.Fields(c); len(f) >= 3 && strings.HasPrefix(f[0], "--from=") && strings.HasSuffix(f[len(f)-1], "/bridge") {
			built, binary = f[len(f)-2], f[len(f)-1]
		}
	}
	if binary == "" {
		t.Fatal("the final stage copies no bridge binary from a build stage")
	}
	var build string
	for _, s := range stages[:len(stages)-1] {
		for _, r := range s.instr("RUN") {
			if strings.Contains(r, "go build") && strings.Contains(r, "-o "+built) {
				build = r
			}
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-s -w", "-X main.version=${VERSION}", "./cmd/bridge"} {
		if !strings.Contains(build, want) {
			t.Errorf("the go build producing %s lacks %q: %q", built, want, build)
		}
	}
	if v, err := os.ReadFile("../cmd/bridge/version.go"); err != nil || !strings.Contains(string(v), "var version = ") {
		t.Errorf("-X main.version= sets nothing: cmd/bridge/version.go has no `var version` (%v)", err)
	}

	hc := final.instr("HEALTHCHECK")
	if len(hc) != 1 {
		t.Fatalf("the final stage has %d HEALTHCHECKs, want 1", len(hc))
	}
	_, cmd, ok := strings.Cut(hc[0], "CMD ")
	if !ok {
		t.Fatalf("HEALTHCHECK %q has no CMD", hc[0])
	}
	if args := execForm(t, "HEALTHCHECK", cmd); args[0] != binary || len(args) < 2 || args[1] != "healthcheck" {
		t.Errorf("HEALTHCHECK runs %v, want [%s healthcheck] (distroless has no curl)", args, binary)
	}
	if ep := final.instr("ENTRYPOINT"); len(ep) != 1 || execForm(t, "ENTRYPOINT", ep[0])[0] != binary {
		t.Errorf("ENTRYPOINT %v, want [%s]", ep, binary)
	}
	if cmd := final.instr("CMD"); len(cmd) != 1 || !slices.Equal(execForm(t, "CMD", cmd[0]), []string{"serve"}) {
		t.Errorf("CMD %v, want [\"serve\"]", cmd)
	}

	listen := cmp.Or(dockerfileEnv(t)["BRIDGE_LISTEN"], config.Default().Listen)
	port := strconv.Itoa(listenPort(t, listen))
	var exposed []string
	for _, e := range final.instr("EXPOSE") {
		exposed = append(exposed, strings.Fields(e)...)
	}
	if !slices.Contains(exposed, port) && !slices.Contains(exposed, port+"/tcp") {
		t.Errorf("EXPOSE %v lacks the BRIDGE_LISTEN port %s (webhooks, /healthz, /readyz, /metrics)", exposed, port)
	}
	for k := range dockerfileEnv(t) {
		if !slices.Contains(config.EnvNames(), k) {
			t.Errorf("the image sets %s, which is no setting of the bridge", k)
		}
	}
}

// ---- .dockerignore ----

type ignoreRule struct {
	re     *regexp.Regexp
	negate bool
}

// parseDockerignore reads .dockerignore with Docker's rules: a pattern
// matches a path or any of its parents, * and ? stay within a path element,
// ** spans elements, ! re-includes, and the last matching line decides.
func parseDockerignore(t *testing.T) []ignoreRule {
	t.Helper()
	b, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	var rules []ignoreRule
	for line := range strings.Lines(string(b)) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			rules = append(rules, compileIgnore(line))
		}
	}
	return rules
}

// compileIgnore turns one .dockerignore line into its rule.
func compileIgnore(line string) ignoreRule {
	r := ignoreRule{}
	if p, ok := strings.CutPrefix(line, "!"); ok {
		r.negate, line = true, p
	}
	line = path.Clean(strings.TrimPrefix(line, "/"))
	var re strings.Builder
	re.WriteString("^")
	for i := 0; i < len(line); i++ {
		switch {
		case strings.HasPrefix(line[i:], "**/"):
			re.WriteString("(.*/)?")
			i += 2
		case strings.HasPrefix(line[i:], "**"):
			re.WriteString(".*")
			i++
		case line[i] == '*':
			re.WriteString("[^/]*")
		case line[i] == '?':
			re.WriteString("[^/]")
		default:
			re.WriteString(regexp.QuoteMeta(line[i : i+1]))
		}
	}
	re.WriteString("$")
	r.re = regexp.MustCompile(re.String())
	return r
}

func ignored(rules []ignoreRule, file string) bool {
	parts := strings.Split(file, "/")
	out := false
	for _, r := range rules {
		for i := range parts {
			if r.re.MatchString(strings.Join(parts[:i+1], "/")) {
				out = !r.negate
				break
			}
		}
	}
	return out
}

func TestDockerignore_KeepsWhatTheBuildReadsAndNothingElse(t *testing.T) {
	rules := parseDockerignore(t)
	// Docker's own examples of the rules, so the matcher is trusted.
	for _, c := range []struct {
		pattern, file string
		want          bool
	}{{"*", "a/b", true}, {"**/*_test.go", "a/b/c_test.go", true}, {"**/*_test.go", "c_test.go", true}, {"a/*.go", "a/b/c.go", false}, {"a", "a/b/c", true}} {
		if got := ignored([]ignoreRule{compileIgnore(c.pattern)}, c.file); got != c.want {
			t.Fatalf("matcher: pattern %q on %s = %v, want %v", c.pattern, c.file, got, c.want)
		}
	}

	// The go command that runs this test: `go test` puts its GOROOT first in PATH.
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command in PATH to list what ./cmd/bridge builds from: %v", err)
	}
	cmd := exec.Command(goCmd, "list", "-deps", "-f", `{{if .Module}}{{if .Module.Main}}{{.Dir}}{{range .GoFiles}} {{.}}{{end}}{{range .EmbedFiles}} {{.}}{{end}}{{end}}{{end}}`, "./cmd/bridge")
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, ee.Stderr)
		}
		t.Fatalf("go list -deps ./cmd/bridge: %v", err)
	}
	root, _ := filepath.Abs("..")
	needed := []string{"go.mod", "go.sum"}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		dir, err := filepath.Rel(root, f[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range f[1:] {
			needed = append(needed, filepath.ToSlash(filepath.Join(dir, name)))
		}
	}
	if len(needed) < 50 {
		t.Fatalf("go list found only %d files for ./cmd/bridge: %v", len(needed), needed)
	}
	for _, f := range needed {
		if ignored(rules, f) {
			t.Errorf(".dockerignore leaves out %s, which `go build ./cmd/bridge` reads", f)
		}
	}
	for _, f := range []string{".git/HEAD", "bridge", "bridge.test", "cmd/bridge/bridge", "data/jetstream/x",
		"deploy/compose/secrets/webhook_secrets", "docs/operations.md", "cmd/bridge/main_test.go", "internal/events/testdata/fuzz/x"} {
		if !ignored(rules, f) {
			t.Errorf(".dockerignore sends %s into the build context", f)
		}
	}
}
