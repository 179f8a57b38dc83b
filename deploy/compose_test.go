package deploy_test

import (
	"cmp"
	"fmt"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/nowbridge/nowbridge/internal/webhook"
)

type composeService struct {
	Image string `yaml:"image"`
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
		Target     string `yaml:"target"`
	} `yaml:"build"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Secrets     []string          `yaml:"secrets"`
	Volumes     []string          `yaml:"volumes"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
	DependsOn map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Networks map[string]struct {
		Aliases []string `yaml:"aliases"`
	} `yaml:"networks"`
	ReadOnly bool     `yaml:"read_only"`
	CapDrop  []string `yaml:"cap_drop"`
}

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Secrets  map[string]struct {
		File string `yaml:"file"`
	} `yaml:"secrets"`
	Volumes map[string]any `yaml:"volumes"`
	raw     string
}

const composePath = "compose/docker-compose.yaml"

func loadCompose(t *testing.T) *composeFile {
	t.Helper()
	docs := decodeAll(t, composePath)
	if len(docs) != 1 {
		t.Fatalf("%s: %d YAML documents, want 1", composePath, len(docs))
	}
	var c composeFile
	if err := docs[0].Decode(&c); err != nil {
		t.Fatalf("%s: %v", composePath, err)
	}
	b, _ := os.ReadFile(composePath)
	c.raw = string(b)
	return &c
}

// natsNode is a nats service of the compose file with its parsed config.
type natsNode struct {
	service, serverName string
	opts                *server.Options
}

func (c *composeFile) natsNodes(t *testing.T) []natsNode {
	t.Helper()
	var nodes []natsNode
	for _, name := range slices.Sorted(maps.Keys(c.Services)) {
		s := c.Services[name]
		if !strings.HasPrefix(s.Image, "nats:") {
			continue
		}
		conf, serverName := flagValue(s.Command, "--config"), flagValue(s.Command, "--server_name")
		host := ""
		for _, v := range s.Volumes {
			parts := strings.Split(v, ":")
			if len(parts) >= 2 && parts[1] == conf {
				host = filepath.Join("compose", parts[0])
			}
		}
		if host == "" {
			t.Fatalf("nats service %s: --config %q is not a file mounted from this folder (volumes %v)", name, conf, s.Volumes)
		}
		opts, err := server.ProcessConfigFile(host)
		if err != nil {
			t.Fatalf("nats service %s: %s does not parse as a NATS server config: %v", name, host, err)
		}
		nodes = append(nodes, natsNode{service: name, serverName: serverName, opts: opts})
	}
	return nodes
}

// bridges are the services built from the Dockerfile's final stage: `bridge serve`.
func (c *composeFile) bridges() []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(c.Services)) {
		if b := c.Services[name].Build; b != nil && b.Target == "" {
			out = append(out, name)
		}
	}
	return out
}

func TestCompose_ThreeNATSNodesInOneJetStreamCluster(t *testing.T) {
	c := loadCompose(t)
	nodes := c.natsNodes(t)
	if len(nodes) != 3 {
		t.Fatalf("compose has %d nats services, want 3", len(nodes))
	}
	var services, names []string
	for _, n := range nodes {
		services = append(services, n.service)
		names = append(names, n.serverName)
	}
	if slices.Contains(names, "") || len(slices.Compact(slices.Sorted(slices.Values(names)))) != 3 {
		t.Errorf("the nats nodes' --server_name values %v; want three distinct names (JetStream clustering needs them)", names)
	}
	for _, n := range nodes {
		o := n.opts
		if !o.JetStream {
			t.Errorf("%s: JetStream is not enabled", n.service)
		}
		if o.Cluster.Name != nodes[0].opts.Cluster.Name || o.Cluster.Name == "" {
			t.Errorf("%s: cluster name %q; want one shared name", n.service, o.Cluster.Name)
		}
		var routed []string
		for _, r := range o.Routes {
			if r.Port() != strconv.Itoa(o.Cluster.Port) {
				t.Errorf("%s: route %s is not on the cluster port %d", n.service, r, o.Cluster.Port)
			}
			routed = append(routed, r.Hostname())
		}
		slices.Sort(routed)
		if !slices.Equal(routed, services) {
			t.Errorf("%s: routes to %v, want every nats service %v", n.service, routed, services)
		}
		store := false
		for _, v := range c.Services[n.service].Volumes {
			if parts := strings.Split(v, ":"); len(parts) >= 2 && path.Clean(parts[1]) == path.Clean(o.StoreDir) {
				_, store = c.Volumes[parts[0]]
			}
		}
		if !store {
			t.Errorf("%s: the JetStream store %s is not on a named volume", n.service, o.StoreDir)
		}
		if s := c.Services[n.service]; s.Healthcheck == nil || len(s.Healthcheck.Test) == 0 {
			t.Errorf("%s: no healthcheck", n.service)
		}
	}
}

func TestCompose_TwoBridgesOnEveryNATSNode(t *testing.T) {
	c := loadCompose(t)
	nodes := c.natsNodes(t)
	bridges := c.bridges()
	if len(bridges) != 2 {
		t.Fatalf("compose has %d bridge services (built from the Dockerfile's final stage): %v, want 2", len(bridges), bridges)
	}
	for _, name := range bridges {
		s := c.Services[name]
		if s.Build.Dockerfile != "Dockerfile" || path.Clean(s.Build.Context) != "../.." {
			t.Errorf("%s: built from %s in %s, want the repository's Dockerfile (../..)", name, s.Build.Dockerfile, s.Build.Context)
		}
		if len(s.Command) > 0 && s.Command[0] != "serve" {
			t.Errorf("%s: runs %v, want the image's `serve`", name, s.Command)
		}
		var hosts []string
		for part := range strings.SplitSeq(s.Environment["BRIDGE_NATS_URL"], ",") {
			u, err := url.Parse(part)
			if err != nil || u.Scheme != "nats" {
				t.Errorf("%s: BRIDGE_NATS_URL entry %q is not a nats:// URL", name, part)
				continue
			}
			for _, n := range nodes {
				if n.service == u.Hostname() && u.Port() != strconv.Itoa(n.opts.Port) {
					t.Errorf("%s: BRIDGE_NATS_URL names %s, whose clients port is %d", name, u.Host, n.opts.Port)
				}
			}
			hosts = append(hosts, u.Hostname())
		}
		slices.Sort(hosts)
		var want []string
		for _, n := range nodes {
			want = append(want, n.service)
			if s.DependsOn[n.service].Condition != "service_healthy" {
				t.Errorf("%s: does not wait for %s to be healthy", name, n.service)
			}
		}
		if !slices.Equal(hosts, want) {
			t.Errorf("%s: BRIDGE_NATS_URL names %v, want all three nodes %v", name, hosts, want)
		}
		if s.Environment["BRIDGE_STREAM_REPLICAS"] != "3" {
			t.Errorf("%s: BRIDGE_STREAM_REPLICAS=%q, want 3 on a 3-node cluster", name, s.Environment["BRIDGE_STREAM_REPLICAS"])
		}
		if s.Healthcheck == nil || !slices.Contains(s.Healthcheck.Test, "healthcheck") {
			t.Errorf("%s: healthcheck %v, want `bridge healthcheck`", name, s.Healthcheck)
		}
		if !s.ReadOnly || !slices.Contains(s.CapDrop, "ALL") {
			t.Errorf("%s: read_only %v, cap_drop %v; want a read-only container without capabilities", name, s.ReadOnly, s.CapDrop)
		}
	}
}

// secretsMounted checks that every /run/secrets/NAME a service reads is one
// of its compose secrets, defined at the top level from a file.
func (c *composeFile) secretMounted(service string) func(file string) error {
	return func(file string) error {
		name, ok := strings.CutPrefix(file, "/run/secrets/")
		if !ok {
			return fmt.Errorf("not under /run/secrets/, where compose mounts secrets")
		}
		if !slices.Contains(c.Services[service].Secrets, name) {
			return fmt.Errorf("%s does not mount secret %q (secrets: %v)", service, name, c.Services[service].Secrets)
		}
		if c.Secrets[name].File == "" {
			return fmt.Errorf("secret %q is not defined from a file at the top level", name)
		}
		return nil
	}
}

var runSecretRe = regexp.MustCompile(`/run/secrets/[A-Za-z0-9_.-]+`)

func TestCompose_EnvNamesAreSettingsAndSecretsAreMountedFiles(t *testing.T) {
	c := loadCompose(t)
	for _, name := range slices.Sorted(maps.Keys(c.Services)) {
		s := c.Services[name]
		if len(s.Environment) > 0 {
			checkEnv(t, name, s.Environment, c.secretMounted(name))
		}
		// A secret read by a command or a healthcheck is mounted too.
		var words []string
		words = append(append(append(words, s.Entrypoint...), s.Command...), slices.Collect(maps.Values(s.Environment))...)
		if s.Healthcheck != nil {
			words = append(words, s.Healthcheck.Test...)
		}
		for _, f := range runSecretRe.FindAllString(strings.Join(words, " "), -1) {
			if err := c.secretMounted(name)(f); err != nil {
				t.Errorf("%s reads %s: %v", name, f, err)
			}
		}
		if s.Healthcheck == nil || len(s.Healthcheck.Test) == 0 {
			t.Errorf("%s: no healthcheck", name)
		}
	}
	// Compose would interpolate a lone $; the shell's must be written $$.
	if strings.Contains(strings.ReplaceAll(c.raw, "$$", ""), "$") {
		t.Error("the compose file has an unescaped $: compose interpolates it (write $$ for the shell)")
	}
}

func TestCompose_SimulatorIsTheBridgesInstanceAndPostsToThem(t *testing.T) {
	c := loadCompose(t)
	var simName string
	for name, s := range c.Services {
		if s.Build != nil && s.Build.Target == "sim" {
			simName = name
		}
	}
	if simName == "" {
		t.Fatal("no service built from the Dockerfile's sim stage")
	}
	if !slices.Contains(dockerfileStages(t), "sim") {
		t.Fatalf("%s builds target sim, which the Dockerfile lacks", simName)
	}
	sim := c.Services[simName]
	args := strings.Fields(strings.ReplaceAll(strings.Join(sim.Command, " "), `"`, ""))
	if !slices.Contains(args, "sim") {
		t.Fatalf("%s does not run `bridge sim`: %v", simName, sim.Command)
	}
	simPort := strconv.Itoa(listenPort(t, flagValue(args, "--listen")))
	hook, err := url.Parse(flagValue(args, "--webhook-url"))
	if err != nil || hook.Path != "/webhooks/servicenow" {
		t.Fatalf("%s: --webhook-url %q, want http://<bridge>:<port>/webhooks/servicenow", simName, flagValue(args, "--webhook-url"))
	}
	imageListen := dockerfileEnv(t)["BRIDGE_LISTEN"]
	for _, name := range c.bridges() {
		b := c.Services[name]
		inst, err := url.Parse(b.Environment["BRIDGE_SN_INSTANCE_URL"])
		if err != nil || inst.Hostname() != simName || inst.Port() != simPort {
			t.Errorf("%s: BRIDGE_SN_INSTANCE_URL %q, want the simulator at %s:%s", name, b.Environment["BRIDGE_SN_INSTANCE_URL"], simName, simPort)
		}
		if id := b.Environment["BRIDGE_SN_CLIENT_ID"]; id == "" || (id != sim.Environment["BRIDGE_SN_CLIENT_ID"] && id != flagValue(args, "--client-id")) {
			t.Errorf("%s: BRIDGE_SN_CLIENT_ID %q is not the simulator's client id", name, id)
		}
		reach := []string{name}
		for _, n := range b.Networks {
			reach = append(reach, n.Aliases...)
		}
		if !slices.Contains(reach, hook.Hostname()) {
			t.Errorf("the simulator posts webhooks to %s, which does not reach %s (names %v)", hook.Host, name, reach)
		}
		if listen := cmp.Or(b.Environment["BRIDGE_LISTEN"], imageListen); strconv.Itoa(listenPort(t, listen)) != hook.Port() {
			t.Errorf("the simulator posts to port %s, %s listens on %s", hook.Port(), name, listen)
		}
		for _, secret := range []string{"webhook_secrets", "sn_client_secret"} {
			if !slices.Contains(b.Secrets, secret) || !slices.Contains(sim.Secrets, secret) {
				t.Errorf("secret %s is not shared by %s and %s", secret, name, simName)
			}
		}
	}
}

// secrets.sh creates every secret file the compose file names, in the form
// the bridge accepts.
func TestCompose_SecretsScriptCreatesEveryComposeSecret(t *testing.T) {
	c := loadCompose(t)
	dir := t.TempDir()
	script, err := os.ReadFile("compose/secrets.sh")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secrets.sh"), script, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "secrets"), 0o755); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second run keeps what the first made
		if out, err := exec.Command("sh", filepath.Join(dir, "secrets.sh")).CombinedOutput(); err != nil {
			t.Fatalf("secrets.sh: %v\n%s", err, out)
		}
	}
	for name, s := range c.Secrets {
		rel, ok := strings.CutPrefix(path.Clean(s.File), "secrets/")
		if !ok {
			t.Errorf("secret %s comes from %s, want a file under ./secrets/ (git-ignored)", name, s.File)
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, "secrets", rel))
		if err != nil {
			t.Errorf("secrets.sh does not create %s for secret %s: %v", s.File, name, err)
			continue
		}
		if fi, _ := os.Stat(filepath.Join(dir, "secrets", rel)); fi.Mode().Perm()&0o004 == 0 {
			t.Errorf("%s is mode %v: the containers' uid 65532 cannot read it", s.File, fi.Mode().Perm())
		}
		v := strings.TrimSpace(string(b))
		if len(v) < 32 {
			t.Errorf("%s holds %d characters, want a random secret of at least 32", s.File, len(v))
		}
		if name == "webhook_secrets" {
			if ss, err := webhook.ParseSecrets(v); err != nil || len(ss) != 1 {
				t.Errorf("%s is no webhook secret the bridge accepts: %v", s.File, err)
			}
		}
	}
	ignore, err := os.ReadFile("compose/secrets/.gitignore")
	if err != nil || !strings.Contains(string(ignore), "*") {
		t.Errorf("compose/secrets/.gitignore must keep the generated secrets out of git: %q %v", ignore, err)
	}
}
