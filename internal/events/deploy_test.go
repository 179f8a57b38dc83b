package events_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
)

// Regenerate with: go test ./internal/events -run TestDeployNATS -update
var update = flag.Bool("update", false, "rewrite deploy/nats/*.json from events.Streams and events.Buckets")

const deployDir = "../../deploy/nats"

func render(t *testing.T, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // "sn.>" stays readable
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestDeployNATS_JSONMatchesCode keeps the shipped stream and bucket configs
// (for `nats stream add --config`) equal to what `bridge serve` creates.
func TestDeployNATS_JSONMatchesCode(t *testing.T) {
	want := map[string][]byte{}
	for _, s := range events.Streams(events.StreamOptions{}) {
		want["stream-"+s.Name+".json"] = render(t, s)
	}
	for _, b := range events.Buckets(events.StreamOptions{}) {
		want["kv-"+b.Bucket+".json"] = render(t, b)
	}
	for _, o := range events.ObjectStores(events.StreamOptions{}) {
		want["obj-"+o.Bucket+".json"] = render(t, o)
	}
	if *update {
		for name, b := range want {
			if err := os.WriteFile(filepath.Join(deployDir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	files, err := filepath.Glob(filepath.Join(deployDir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if _, ok := want[filepath.Base(f)]; !ok {
			t.Errorf("%s is not a stream or bucket of events.Streams/Buckets/ObjectStores: remove it", f)
		}
	}
	for name, b := range want {
		path := filepath.Join(deployDir, name)
		got, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("%s: %v (regenerate: go test ./internal/events -run TestDeployNATS -update)", path, err)
			continue
		}
		if !bytes.Equal(got, b) {
			t.Errorf("%s differs from the code (regenerate: go test ./internal/events -run TestDeployNATS -update)", path)
		}
	}
	// The files must also decode to exactly the configs, not just match bytes.
	for _, s := range events.Streams(events.StreamOptions{}) {
		var got jetstream.StreamConfig
		if b, err := os.ReadFile(filepath.Join(deployDir, "stream-"+s.Name+".json")); err == nil {
			if err := json.Unmarshal(b, &got); err != nil || !reflect.DeepEqual(got, s) {
				t.Errorf("stream-%s.json decodes to %+v (%v), want %+v", s.Name, got, err, s)
			}
		}
	}
}
