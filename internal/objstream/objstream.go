// Package objstream reads an object of a JetStream object store in bounded
// memory: a few chunks ahead at most, whatever the object's size. nats.go's
// ObjectStore.Get delivers the chunks on a push subscription that buffers
// as far ahead as the server sends (26 MB of a 50 MB object, 44 MB of a
// 200 MB one, measured), which a bridge moving large attachments cannot
// afford; this reader pulls them instead, and checks the object's size and
// digest as Get does.
package objstream

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/sdk/wire"
)

// Prefetch is how many chunks the reader asks for at once (128 KiB each
// with the object store's default chunk size).
const Prefetch = 8

// ErrDigestMismatch is the reader's error instead of io.EOF when the bytes
// read are not the object's (size or SHA-256).
var ErrDigestMismatch = errors.New("object bytes do not match the object's size and digest")

// Open opens name in bucket for reading. The caller closes it; reading to
// io.EOF means every byte was read and matched the object's digest.
func Open(ctx context.Context, js jetstream.JetStream, bucket, name string) (io.ReadCloser, *jetstream.ObjectInfo, error) {
	obj, err := js.ObjectStore(ctx, bucket)
	if err != nil {
		return nil, nil, fmt.Errorf("object store %s: %w", bucket, err)
	}
	info, err := obj.GetInfo(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	if info.Opts != nil && info.Opts.Link != nil {
		return nil, nil, fmt.Errorf("object %s of %s is a link: not supported", name, bucket)
	}
	r := &reader{ctx: ctx, info: info, h: sha256.New()}
	if info.Size == 0 {
		return r, info, nil
	}
	st, err := js.Stream(ctx, "OBJ_"+bucket)
	if err != nil {
		return nil, nil, fmt.Errorf("object store %s: %w", bucket, err)
	}
	cons, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{
		FilterSubject: "$O." + bucket + ".C." + info.NUID,
		AckPolicy:     jetstream.AckNonePolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
		InactiveThreshold: 30 * time.Second, MemoryStorage: true, Replicas: 1,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read object %s of %s: %w", name, bucket, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(Prefetch))
	if err != nil {
		_ = st.DeleteConsumer(context.WithoutCancel(ctx), cons.CachedInfo().Name)
		return nil, nil, fmt.Errorf("read object %s of %s: %w", name, bucket, err)
	}
	r.st, r.cons, r.it = st, cons, it
	r.stop = context.AfterFunc(ctx, it.Stop)
	return r, info, nil
}

type reader struct {
	ctx  context.Context
	info *jetstream.ObjectInfo
	st   jetstream.Stream
	cons jetstream.Consumer
	it   jetstream.MessagesContext
	stop func() bool

	buf []byte // the rest of the current chunk
	n   uint64 // bytes read
	h   hash.Hash
	err error // sticky
}

func (r *reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	for len(r.buf) == 0 {
		if r.n >= r.info.Size {
			r.err = r.finish()
			return 0, r.err
		}
		msg, err := r.it.Next()
		if err != nil {
			if r.ctx.Err() != nil {
				err = r.ctx.Err()
			}
			r.err = fmt.Errorf("read object %s after %d of %d bytes: %w", r.info.Name, r.n, r.info.Size, err)
			return 0, r.err
		}
		r.buf = msg.Data()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	r.n += uint64(n)
	r.h.Write(p[:n])
	if r.n > r.info.Size {
		r.err = fmt.Errorf("object %s: %w: more than its %d bytes", r.info.Name, ErrDigestMismatch, r.info.Size)
		return n, r.err
	}
	return n, nil
}

// finish checks the digest at the end.
func (r *reader) finish() error {
	if got := wire.Digest(r.h.Sum(nil)); r.info.Digest != "" && got != r.info.Digest {
		return fmt.Errorf("object %s: %w: SHA-256 %s, the object says %s", r.info.Name, ErrDigestMismatch, got, r.info.Digest)
	}
	return io.EOF
}

// Close stops reading and removes the reader's consumer.
func (r *reader) Close() error {
	if r.it == nil {
		return nil
	}
	r.stop()
	r.it.Stop()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx), 5*time.Second)
	defer cancel()
	// Best effort: a consumer left behind goes after its inactive threshold.
	_ = r.st.DeleteConsumer(ctx, r.cons.CachedInfo().Name)
	r.it = nil
	return nil
}
