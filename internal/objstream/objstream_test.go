package objstream

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/natstest"
)

func TestMain(m *testing.M) {
	// nats.go v1.55.0's ObjectStore.Put may leave its reconnect watcher
	// blocked (see internal/attach's TestMain).
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"))
}

func TestOpen_ReadsTheObjectWholeAndRemovesItsConsumer(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	ctx := t.Context()
	obj, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: "files"})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 3<<20+12345) // 25 chunks and a bit
	for i := range data {
		data[i] = byte(i * 7)
	}
	if _, err := obj.PutBytes(ctx, "big", data); err != nil {
		t.Fatal(err)
	}
	if _, err := obj.PutBytes(ctx, "empty", nil); err != nil {
		t.Fatal(err)
	}
	r, info, err := Open(ctx, js, "files", "big")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, data) || info.Size != uint64(len(data)) {
		t.Fatalf("read %d bytes (%v), want the %d put", len(got), err, len(data))
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	st, _ := js.Stream(ctx, "OBJ_files")
	if si, err := st.Info(ctx); err != nil || si.State.Consumers != 0 {
		t.Errorf("the stream has %d consumers after Close (%v), want none", si.State.Consumers, err)
	}
	r, _, err = Open(ctx, js, "files", "empty")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(r); err != nil || len(b) != 0 {
		t.Errorf("empty object: %d bytes, %v", len(b), err)
	}
	_ = r.Close()
	if _, _, err := Open(ctx, js, "files", "missing"); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Errorf("a missing object: %v, want ErrObjectNotFound", err)
	}
}

func TestOpen_BytesThatDoNotMatchTheDigestEndInAnError(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	ctx := t.Context()
	obj, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: "files"})
	if err != nil {
		t.Fatal(err)
	}
	info, err := obj.PutBytes(ctx, "doc", bytes.Repeat([]byte("a"), 1000))
	if err != nil {
		t.Fatal(err)
	}
	// Other bytes of the same length under the object's chunks: they are
	// no longer its digest's.
	st, err := js.Stream(ctx, "OBJ_files")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject("$O.files.C."+info.NUID)); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "$O.files.C."+info.NUID, bytes.Repeat([]byte("b"), 1000)); err != nil {
		t.Fatal(err)
	}
	r, _, err := Open(ctx, js, "files", "doc")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	_, err = io.ReadAll(r)
	if !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("read: %v, want ErrDigestMismatch", err)
	}
}
