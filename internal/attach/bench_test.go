package attach

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/objstream"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/state"
	"github.com/nowbridge/nowbridge/sdk/wire"
)

// The 50 MB benchmark measures the bridge's side alone: nats-server and the
// simulator (which keeps files in memory) run in a helper process, this
// same test binary started with helperEnv, so this process's peak RSS and
// heap are the bridge's streaming, not the servers' stores.

const (
	helperEnv  = "NOWBRIDGE_ATTACH_HELPER"
	benchMBEnv = "NOWBRIDGE_ATTACH_BENCH_MB" // file size in MB (default 50)
)

// helperInfo is what the helper prints once ready.
type helperInfo struct {
	NATS, Sim      string
	SysID, AttID   string
	Size           int64
	Hash, FileName string
}

func benchSize() int64 {
	if n, err := strconv.Atoi(os.Getenv(benchMBEnv)); err == nil && n > 0 {
		return int64(n) << 20
	}
	return 50 << 20
}

// helperMain runs the helper when this binary was started as one: a
// nats-server with a file store and the simulator holding one incident
// with a file of benchSize bytes (genReader seed 1); it prints helperInfo
// and serves until its stdin closes.
func helperMain() bool {
	if os.Getenv(helperEnv) == "" {
		return false
	}
	if err := runHelper(); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	return true
}

func runHelper() error {
	dir, err := os.MkdirTemp("", "attach-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ns, err := server.NewServer(natstest.Options(dir))
	if err != nil {
		return err
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		return fmt.Errorf("nats-server not ready")
	}
	defer ns.Shutdown()
	sim := snsim.New(snsim.Config{ClientID: "bridge", ClientSecret: "s3cret", Seed: 1})
	defer sim.Close()
	srv := httptest.NewServer(sim)
	defer srv.Close()
	rec, err := sim.Insert("incident", map[string]string{"short_description": "50 MB each way"}, "beth.anglin")
	if err != nil {
		return err
	}
	size := benchSize()
	data, err := io.ReadAll(&genReader{seed: 1, n: size})
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	id := sim.AddAttachment("incident", rec["sys_id"], "capture.bin", "application/octet-stream", data)
	data = nil
	out, _ := json.Marshal(helperInfo{NATS: ns.ClientURL(), Sim: srv.URL, SysID: rec["sys_id"], AttID: id, Size: size, Hash: hex.EncodeToString(sum[:]), FileName: "capture.bin"})
	fmt.Println(string(out))
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// genReader yields n bytes of a file without holding it: byte i is
// seed + byte(i*31), as screenshot makes them.
type genReader struct {
	seed byte
	i, n int64
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.i >= g.n {
		return 0, io.EOF
	}
	k := int(min(int64(len(p)), g.n-g.i))
	for j := range k {
		p[j] = g.seed + byte((g.i+int64(j))*31)
	}
	g.i += int64(k)
	return k, nil
}

// peakMeter samples this process's live heap while a phase runs and reads
// its peak RSS (VmHWM, reset through /proc/self/clear_refs).
type peakMeter struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	baseHeap uint64
	peakHeap uint64
	baseRSS  int64
}

func startMeter() *peakMeter {
	runtime.GC()
	debug.FreeOSMemory()
	m := &peakMeter{stop: make(chan struct{})}
	m.baseHeap = liveHeap()
	m.peakHeap = m.baseHeap
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) // VmHWM = VmRSS from here
	m.baseRSS = procStatus("VmRSS")
	m.wg.Go(func() {
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				m.peakHeap = max(m.peakHeap, liveHeap())
			}
		}
	})
	return m
}

// end returns the phase's peak heap and RSS above where it started, in MB.
func (m *peakMeter) end() (heapMB, rssMB float64) {
	close(m.stop)
	m.wg.Wait()
	m.peakHeap = max(m.peakHeap, liveHeap())
	return float64(m.peakHeap-m.baseHeap) / (1 << 20), float64(procStatus("VmHWM")-m.baseRSS) / 1024
}

func liveHeap() uint64 {
	s := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	rtmetrics.Read(s)
	return s[0].Value.Uint64()
}

// procStatus reads a kB field of /proc/self/status (0 where there is none).
func procStatus(field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

type phase struct {
	name            string
	seconds, heapMB float64
	rssMB           float64
}

// BenchmarkAttachment50MB moves a 50 MB file each way through the bridge's
// own code (HandleSN: the Attachment API download streamed into the object
// store and verified; HandleApp: the object streamed into the upload),
// against the simulator over loopback HTTP and nats-server in the helper
// process, and a raw object store put and get of the same bytes in the
// same run. It reports each way's throughput as a share of the raw
// operation's and the peak heap and RSS above the phase's start.
//
//	go test -run '^$' -bench Attachment50MB -benchtime 3x ./internal/attach
func BenchmarkAttachment50MB(b *testing.B) {
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = stdin.Close(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("helper: %v", err)
	}
	var hi helperInfo
	if err := json.Unmarshal([]byte(line), &hi); err != nil {
		b.Fatalf("helper said %q: %v", line, err)
	}

	ctx := context.Background()
	nc, err := nats.Connect(hi.NATS)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		b.Fatal(err)
	}
	sn, err := snclient.New(snclient.Config{InstanceURL: hi.Sim, ClientID: "bridge", ClientSecret: "s3cret", DisableBackgroundRefresh: true})
	if err != nil {
		b.Fatal(err)
	}
	defer sn.Close()
	log := slog.New(slog.DiscardHandler)
	maps, err := mapping.Load(nil, []string{"incident"}, log)
	if err != nil {
		b.Fatal(err)
	}
	_, links, err := state.Open(ctx, js)
	if err != nil {
		b.Fatal(err)
	}
	if err := links.Link(ctx, "ticket", "BENCH-1", "incident", hi.SysID); err != nil {
		b.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, events.BucketLinks)
	if err != nil {
		b.Fatal(err)
	}
	s, err := New(ctx, Config{JS: js, ServiceNow: sn, Entities: maps, Links: links, LinksKV: kv, Limits: Limits{MaxBytes: snsim.DefaultAttachmentMaxSize}, Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	obj, err := js.ObjectStore(ctx, events.BucketAttachments)
	if err != nil {
		b.Fatal(err)
	}
	key := filesKey("incident", hi.SysID)
	forget := func() { // the record's files start over each time
		if err := kv.Purge(ctx, key); err != nil && err != jetstream.ErrKeyNotFound {
			b.Fatal(err)
		}
	}
	run := func(name string, f func() error) phase {
		runtime.GC()
		m := startMeter()
		start := time.Now()
		err := f()
		sec := time.Since(start).Seconds()
		heap, rss := m.end()
		if err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		return phase{name: name, seconds: sec, heapMB: heap, rssMB: rss}
	}

	// The app's file, put as the app would (PutAttachment does this Put).
	if _, err := obj.Put(ctx, jetstream.ObjectMeta{Name: "bench/app"}, &genReader{seed: 2, n: hi.Size}); err != nil {
		b.Fatal(err)
	}
	var sums [5]phase
	var uploaded string
	b.ResetTimer()
	for i := range b.N {
		ps := []phase{
			run("raw_put", func() error {
				_, err := obj.Put(ctx, jetstream.ObjectMeta{Name: "bench/raw"}, &genReader{seed: 1, n: hi.Size})
				return err
			}),
			run("to_app", func() error {
				forget()
				ev := &events.SNEvent{Table: events.TableAttachment, SysID: hi.AttID, Action: events.ActionInsert, SysUpdatedOn: "2026-11-28 10:00:00",
					Record: events.Fields{"table_name": "incident", "table_sys_id": hi.SysID, "file_name": hi.FileName,
						"content_type": "application/octet-stream", "size_bytes": strconv.FormatInt(hi.Size, 10), "hash": hi.Hash}}
				out, err := s.HandleSN(ctx, ev)
				if err == nil && out != OutcomeAdded {
					err = fmt.Errorf("outcome %s, want added", out)
				}
				return err
			}),
			run("raw_get", func() error {
				r, err := obj.Get(ctx, "bench/app")
				if err != nil {
					return err
				}
				defer r.Close()
				_, err = io.Copy(io.Discard, r)
				return err
			}),
			run("bounded_get", func() error {
				r, _, err := objstream.Open(ctx, js, events.BucketAttachments, "bench/app")
				if err != nil {
					return err
				}
				defer r.Close()
				_, err = io.Copy(io.Discard, r)
				return err
			}),
			run("to_servicenow", func() error {
				forget()
				res, err := s.HandleApp(ctx, &events.AttachmentMessage{Action: wire.AttachmentAdd, Entity: "ticket", ExternalID: "BENCH-1",
					AttachmentID: "A" + strconv.Itoa(i), Object: "bench/app", FileName: "upload.bin", ContentType: "application/octet-stream"})
				if err != nil {
					return err
				}
				if res.Outcome != events.OutcomeCreated {
					return fmt.Errorf("outcome %s, want created", res.Outcome)
				}
				uploaded = res.Attachment.AttachmentSysID
				return nil
			}),
		}
		// The next round uploads again (and the helper keeps one copy).
		if err := sn.DeleteAttachment(ctx, uploaded); err != nil {
			b.Fatal(err)
		}
		for j, p := range ps {
			sums[j].name = p.name
			sums[j].seconds += p.seconds
			sums[j].heapMB = max(sums[j].heapMB, p.heapMB)
			sums[j].rssMB = max(sums[j].rssMB, p.rssMB)
		}
	}
	b.StopTimer()
	mb := float64(hi.Size) / (1 << 20)
	for _, p := range sums {
		b.ReportMetric(mb*float64(b.N)/p.seconds, p.name+"_MB/s")
		b.ReportMetric(p.heapMB, p.name+"_peak_heap_MB")
		b.ReportMetric(p.rssMB, p.name+"_peak_rss_MB")
	}
	b.ReportMetric(sums[0].seconds/sums[1].seconds, "to_app_vs_raw_put")
	b.ReportMetric(sums[2].seconds/sums[4].seconds, "to_servicenow_vs_raw_get")
	b.ReportMetric(sums[3].seconds/sums[4].seconds, "to_servicenow_vs_bounded_get")
}
