package deploy_test

import (
	"cmp"
	"fmt"
	"maps"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

type objectMeta struct {
	Name      string            `yaml:"name"`
	Namespace string            `yaml:"namespace"`
	Labels    map[string]string `yaml:"labels"`
}

type object struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
	file       string
	node       *yaml.Node
}

type labelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type securityContext struct {
	RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
	RunAsUser                *int64 `yaml:"runAsUser"`
	ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
	Capabilities             struct {
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
	PeriodSeconds int `yaml:"periodSeconds"`
}

type container struct {
	Name  string   `yaml:"name"`
	Image string   `yaml:"image"`
	Args  []string `yaml:"args"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	Env []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom any    `yaml:"valueFrom"`
	} `yaml:"env"`
	EnvFrom []struct {
		ConfigMapRef *struct {
			Name string `yaml:"name"`
		} `yaml:"configMapRef"`
		SecretRef *struct {
			Name string `yaml:"name"`
		} `yaml:"secretRef"`
	} `yaml:"envFrom"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
	StartupProbe   *probe `yaml:"startupProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext securityContext `yaml:"securityContext"`
}

type deployment struct {
	Spec struct {
		Replicas int           `yaml:"replicas"`
		Selector labelSelector `yaml:"selector"`
		Template struct {
			Metadata objectMeta `yaml:"metadata"`
			Spec     struct {
				TerminationGracePeriodSeconds int             `yaml:"terminationGracePeriodSeconds"`
				SecurityContext               securityContext `yaml:"securityContext"`
				Containers                    []container     `yaml:"containers"`
				Volumes                       []struct {
					Name   string `yaml:"name"`
					Secret *struct {
						SecretName string `yaml:"secretName"`
						Items      []struct {
							Key  string `yaml:"key"`
							Path string `yaml:"path"`
						} `yaml:"items"`
					} `yaml:"secret"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type service struct {
	Spec struct {
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort any    `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type pdb struct {
	Spec struct {
		MinAvailable any           `yaml:"minAvailable"`
		Selector     labelSelector `yaml:"selector"`
	} `yaml:"spec"`
}

type serviceMonitor struct {
	Spec struct {
		Selector          labelSelector `yaml:"selector"`
		NamespaceSelector struct {
			MatchNames []string `yaml:"matchNames"`
		} `yaml:"namespaceSelector"`
		Endpoints []struct {
			Port string `yaml:"port"`
			Path string `yaml:"path"`
		} `yaml:"endpoints"`
	} `yaml:"spec"`
}

type kustomization struct {
	Namespace string   `yaml:"namespace"`
	Resources []string `yaml:"resources"`
	Images    []struct {
		Name    string `yaml:"name"`
		NewName string `yaml:"newName"`
		NewTag  string `yaml:"newTag"`
	} `yaml:"images"`
}

// The kinds deploy/kubernetes holds, with their API versions; each once.
var wantKinds = map[string]string{
	"Namespace":           "v1",
	"ConfigMap":           "v1",
	"Secret":              "v1",
	"Deployment":          "apps/v1",
	"Service":             "v1",
	"PodDisruptionBudget": "policy/v1",
	"ServiceMonitor":      "monitoring.coreos.com/v1",
}

// optionalManifests are in deploy/kubernetes but not in its kustomization.
var optionalManifests = []string{"servicemonitor.yaml"}

func decodeNode(t *testing.T, o object, v any) {
	t.Helper()
	if err := o.node.Decode(v); err != nil {
		t.Fatalf("%s: %s %s: %v", o.file, o.Kind, o.Metadata.Name, err)
	}
}

// k8s is every manifest of deploy/kubernetes, decoded.
type k8s struct {
	objects       []object
	byKind        map[string]object
	kustomization kustomization
	deploy        deployment
	configMap     map[string]string
	secretKeys    map[string]string // stringData and data
	service       service
	pdb           pdb
	monitor       serviceMonitor
}

func loadK8s(t *testing.T) *k8s {
	t.Helper()
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in deploy/kubernetes: %v", err)
	}
	m := &k8s{byKind: map[string]object{}}
	for _, f := range files {
		for _, n := range decodeAll(t, f) {
			o := object{file: f, node: n}
			if err := n.Decode(&o); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if o.Kind == "Kustomization" {
				decodeNode(t, o, &m.kustomization)
				continue
			}
			if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
				t.Errorf("%s: a document without apiVersion, kind or metadata.name: %+v", f, o)
				continue
			}
			if _, dup := m.byKind[o.Kind]; dup {
				t.Errorf("%s: a second %s (%s); the test expects one of each kind", f, o.Kind, o.Metadata.Name)
			}
			m.byKind[o.Kind] = o
			m.objects = append(m.objects, o)
		}
	}
	for kind := range wantKinds {
		if _, ok := m.byKind[kind]; !ok {
			t.Fatalf("deploy/kubernetes has no %s", kind)
		}
	}
	decodeNode(t, m.byKind["Deployment"], &m.deploy)
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	decodeNode(t, m.byKind["ConfigMap"], &cm)
	m.configMap = cm.Data
	var sec struct {
		StringData map[string]string `yaml:"stringData"`
		Data       map[string]string `yaml:"data"`
	}
	decodeNode(t, m.byKind["Secret"], &sec)
	m.secretKeys = maps.Collect(maps.All(sec.StringData))
	maps.Copy(m.secretKeys, sec.Data)
	decodeNode(t, m.byKind["Service"], &m.service)
	decodeNode(t, m.byKind["PodDisruptionBudget"], &m.pdb)
	decodeNode(t, m.byKind["ServiceMonitor"], &m.monitor)
	if len(m.deploy.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("the Deployment has %d containers, the test expects the bridge alone", len(m.deploy.Spec.Template.Spec.Containers))
	}
	return m
}

func (m *k8s) bridge() container { return m.deploy.Spec.Template.Spec.Containers[0] }

// containerPort resolves a probe's or a Service's port (a name or a number)
// to the bridge container's port number; 0 when it names no port of it.
func (m *k8s) containerPort(p any) int {
	for _, cp := range m.bridge().Ports {
		switch v := p.(type) {
		case string:
			if cp.Name == v {
				return cp.ContainerPort
			}
		case int:
			if cp.ContainerPort == v {
				return v
			}
		}
	}
	return 0
}

func TestKubernetes_KustomizationListsEveryManifest(t *testing.T) {
	m := loadK8s(t)
	files, _ := filepath.Glob("kubernetes/*.yaml")
	var want []string
	for _, f := range files {
		base := filepath.Base(f)
		if base != "kustomization.yaml" && !slices.Contains(optionalManifests, base) {
			want = append(want, base)
		}
	}
	got := slices.Sorted(slices.Values(m.kustomization.Resources))
	if !slices.Equal(got, want) {
		t.Errorf("kustomization.yaml resources = %v, want every manifest but the optional %v: %v", got, optionalManifests, want)
	}
	ns := m.byKind["Namespace"].Metadata.Name
	if m.kustomization.Namespace != ns {
		t.Errorf("kustomization.yaml namespace %q, the Namespace is %q", m.kustomization.Namespace, ns)
	}
	image, set := m.bridge().Image, false
	for _, i := range m.kustomization.Images {
		set = set || (i.Name == image && i.NewName != "")
	}
	if !set {
		t.Errorf("kustomization.yaml images does not set the Deployment's image %q", image)
	}
}

func TestKubernetes_EveryDocumentIsAKnownKindInTheNamespace(t *testing.T) {
	m := loadK8s(t)
	ns := m.byKind["Namespace"].Metadata.Name
	for _, o := range m.objects {
		want, ok := wantKinds[o.Kind]
		switch {
		case !ok:
			t.Errorf("%s: unexpected kind %s", o.file, o.Kind)
		case o.APIVersion != want:
			t.Errorf("%s: %s has apiVersion %s, want %s", o.file, o.Kind, o.APIVersion, want)
		case o.Kind != "Namespace" && o.Metadata.Namespace != ns:
			t.Errorf("%s: %s %s is in namespace %q, want %q", o.file, o.Kind, o.Metadata.Name, o.Metadata.Namespace, ns)
		}
	}
}

func TestKubernetes_DeploymentRunsReplicasNonRootWithLimits(t *testing.T) {
	m := loadK8s(t)
	d := m.deploy.Spec
	if d.Replicas < 2 {
		t.Errorf("Deployment replicas %d, want at least 2", d.Replicas)
	}
	pod := d.Template.Spec
	c := m.bridge()
	if !slices.Equal(c.Args, []string{"serve"}) {
		t.Errorf("the bridge container runs %v, want [serve]", c.Args)
	}
	nonRoot := func(sc securityContext) bool { return sc.RunAsNonRoot != nil && *sc.RunAsNonRoot }
	if !nonRoot(pod.SecurityContext) && !nonRoot(c.SecurityContext) {
		t.Error("neither the pod nor the container sets runAsNonRoot: true")
	}
	if u := pod.SecurityContext.RunAsUser; u == nil || *u == 0 {
		t.Errorf("pod runAsUser %v, want the image's non-root uid", u)
	} else if img := dockerfileUser(t); strconv.FormatInt(*u, 10) != img {
		t.Errorf("pod runAsUser %d, the image's USER is %s", *u, img)
	}
	sc := c.SecurityContext
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("the container's root filesystem is not read-only")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("the container does not set allowPrivilegeEscalation: false")
	}
	if !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("the container drops capabilities %v, want ALL", sc.Capabilities.Drop)
	}
	for _, r := range []string{"cpu", "memory"} {
		if c.Resources.Requests[r] == "" || c.Resources.Limits[r] == "" {
			t.Errorf("resources: %s request %q, limit %q; want both", r, c.Resources.Requests[r], c.Resources.Limits[r])
		}
	}
	shutdown := m.configDuration(t, "BRIDGE_SHUTDOWN_TIMEOUT", func(c config.Config) time.Duration { return c.ShutdownTimeout })
	if grace := time.Duration(pod.TerminationGracePeriodSeconds) * time.Second; grace <= shutdown {
		t.Errorf("terminationGracePeriodSeconds %s is not above BRIDGE_SHUTDOWN_TIMEOUT %s: the kubelet kills the bridge mid-shutdown", grace, shutdown)
	}
}

// configDuration is a duration setting as the ConfigMap gives it, else its default.
func (m *k8s) configDuration(t *testing.T, env string, def func(config.Config) time.Duration) time.Duration {
	t.Helper()
	v, ok := m.configMap[env]
	if !ok {
		return def(config.Default())
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("ConfigMap %s=%q: %v", env, v, err)
	}
	return d
}

func TestKubernetes_ProbesAskTheBridgesListener(t *testing.T) {
	m := loadK8s(t)
	listen := config.Default().Listen
	if v, ok := m.configMap["BRIDGE_LISTEN"]; ok {
		listen = v
	}
	port := listenPort(t, listen)
	c := m.bridge()
	for _, p := range []struct {
		name, path string
		probe      *probe
	}{
		{"readinessProbe", "/readyz", c.ReadinessProbe},
		{"livenessProbe", "/healthz", c.LivenessProbe},
		{"startupProbe", "/healthz", c.StartupProbe},
	} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("the bridge container has no HTTP %s", p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path {
			t.Errorf("%s GETs %s, want %s", p.name, p.probe.HTTPGet.Path, p.path)
		}
		if got := m.containerPort(p.probe.HTTPGet.Port); got != port {
			t.Errorf("%s asks port %v (container port %d), the bridge listens on %d (BRIDGE_LISTEN %s)", p.name, p.probe.HTTPGet.Port, got, port, listen)
		}
	}
	drain := m.configDuration(t, "BRIDGE_DRAIN_GRACE", func(c config.Config) time.Duration { return c.DrainGrace })
	if r := c.ReadinessProbe; r != nil && time.Duration(r.PeriodSeconds)*time.Second >= drain {
		t.Errorf("readinessProbe period %ds is not below BRIDGE_DRAIN_GRACE %s: the load balancer may not see the drain", r.PeriodSeconds, drain)
	}
}

func TestKubernetes_ServicePDBAndMonitorSelectTheBridgePods(t *testing.T) {
	m := loadK8s(t)
	pods := m.deploy.Spec.Template.Metadata.Labels
	subset := func(sel map[string]string) bool {
		for k, v := range sel {
			if pods[k] != v {
				return false
			}
		}
		return len(sel) > 0
	}
	if !subset(m.deploy.Spec.Selector.MatchLabels) {
		t.Errorf("the Deployment's selector %v does not select its pods %v", m.deploy.Spec.Selector.MatchLabels, pods)
	}
	if !subset(m.service.Spec.Selector) {
		t.Errorf("the Service selects %v, the bridge pods have %v", m.service.Spec.Selector, pods)
	}
	if !maps.Equal(m.pdb.Spec.Selector.MatchLabels, m.deploy.Spec.Selector.MatchLabels) {
		t.Errorf("the PodDisruptionBudget selects %v, the Deployment %v", m.pdb.Spec.Selector.MatchLabels, m.deploy.Spec.Selector.MatchLabels)
	}
	if m.pdb.Spec.MinAvailable != 1 {
		t.Errorf("PodDisruptionBudget minAvailable %v, want 1", m.pdb.Spec.MinAvailable)
	}
	if m.pdb.Spec.MinAvailable == m.deploy.Spec.Replicas {
		t.Error("PodDisruptionBudget minAvailable equals the replicas: no node could ever be drained")
	}

	listen := cmp.Or(m.configMap["BRIDGE_LISTEN"], config.Default().Listen)
	ports := map[string]int{}
	for _, p := range m.service.Spec.Ports {
		ports[p.Name] = p.Port
		if got := m.containerPort(p.TargetPort); got != listenPort(t, listen) {
			t.Errorf("Service port %s targets %v (container port %d), the bridge listens on %s", p.Name, p.TargetPort, got, listen)
		}
	}
	for _, name := range []string{"webhook", "metrics"} {
		if _, ok := ports[name]; !ok {
			t.Errorf("the Service has no port named %q (ports %v)", name, ports)
		}
	}

	svcLabels := m.byKind["Service"].Metadata.Labels
	for k, v := range m.monitor.Spec.Selector.MatchLabels {
		if svcLabels[k] != v {
			t.Errorf("the ServiceMonitor selects %s=%s, the Service is labelled %v", k, v, svcLabels)
		}
	}
	if ns := m.byKind["Namespace"].Metadata.Name; len(m.monitor.Spec.NamespaceSelector.MatchNames) > 0 && !slices.Contains(m.monitor.Spec.NamespaceSelector.MatchNames, ns) {
		t.Errorf("the ServiceMonitor looks in %v, the Service is in %s", m.monitor.Spec.NamespaceSelector.MatchNames, ns)
	}
	if len(m.monitor.Spec.Endpoints) == 0 {
		t.Fatal("the ServiceMonitor has no endpoints")
	}
	for _, e := range m.monitor.Spec.Endpoints {
		if _, ok := ports[e.Port]; !ok || e.Path != "/metrics" {
			t.Errorf("ServiceMonitor endpoint port %q path %q; want a Service port name (%v) and /metrics", e.Port, e.Path, slices.Sorted(maps.Keys(ports)))
		}
	}
}

func TestKubernetes_EnvNamesAreSettingsAndSecretsAreMountedFiles(t *testing.T) {
	m := loadK8s(t)
	c := m.bridge()
	env := map[string]string{}
	for _, from := range c.EnvFrom {
		switch {
		case from.ConfigMapRef != nil && from.ConfigMapRef.Name == m.byKind["ConfigMap"].Metadata.Name:
			maps.Copy(env, m.configMap)
		case from.ConfigMapRef != nil:
			t.Errorf("envFrom names ConfigMap %q, which deploy/kubernetes does not define", from.ConfigMapRef.Name)
		case from.SecretRef != nil:
			t.Errorf("envFrom takes Secret %q as environment values: secrets are files (BRIDGE_*_FILE)", from.SecretRef.Name)
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			t.Errorf("env %s is taken from %v: secrets are files (BRIDGE_*_FILE), other settings in the ConfigMap", e.Name, e.ValueFrom)
		}
		env[e.Name] = e.Value
	}

	// Where each mounted file comes from: mount path -> the Secret's keys.
	secretName := m.byKind["Secret"].Metadata.Name
	mounted := map[string][]string{}
	for _, vm := range c.VolumeMounts {
		for _, v := range m.deploy.Spec.Template.Spec.Volumes {
			if v.Name != vm.Name || v.Secret == nil {
				continue
			}
			if v.Secret.SecretName != secretName {
				t.Errorf("volume %s mounts Secret %q, which deploy/kubernetes does not define", v.Name, v.Secret.SecretName)
			}
			var files []string
			for _, it := range v.Secret.Items {
				files = append(files, it.Path)
			}
			if len(v.Secret.Items) == 0 {
				files = slices.Collect(maps.Keys(m.secretKeys))
			}
			mounted[path.Clean(vm.MountPath)] = files
		}
	}
	checkEnv(t, "deployment.yaml", env, func(file string) error {
		files, ok := mounted[path.Dir(file)]
		if !ok {
			return fmt.Errorf("no secret volume is mounted at %s (mounts: %v)", path.Dir(file), slices.Sorted(maps.Keys(mounted)))
		}
		if !slices.Contains(files, path.Base(file)) {
			return fmt.Errorf("the Secret mounted at %s has no key %s (keys: %v)", path.Dir(file), path.Base(file), slices.Sorted(slices.Values(files)))
		}
		return nil
	})
	if len(m.secretKeys) == 0 {
		t.Error("the Secret example holds no keys")
	}
	for k := range m.secretKeys {
		if !slices.ContainsFunc(slices.Collect(maps.Values(env)), func(v string) bool { return path.Base(v) == k }) {
			t.Errorf("Secret key %s is read by no BRIDGE_*_FILE", k)
		}
	}
}

func TestKubernetes_SecretExampleHoldsOnlyPlaceholders(t *testing.T) {
	m := loadK8s(t)
	for k, v := range m.secretKeys {
		if k == "nats_url" {
			if urlsHaveCredentials(v) {
				t.Errorf("Secret nats_url %q carries credentials in an example file", v)
			}
			continue
		}
		if !strings.Contains(v, "REPLACE_ME") {
			t.Errorf("Secret key %s holds %q, want a placeholder marked REPLACE_ME", k, v)
		}
	}
	// The placeholder must not start a bridge that accepts webhooks.
	if _, err := webhook.ParseSecrets(m.secretKeys["webhook_secrets"]); err == nil {
		t.Errorf("the example webhook_secrets %q parses as a real secret; a forgotten placeholder would be accepted", m.secretKeys["webhook_secrets"])
	}
}
