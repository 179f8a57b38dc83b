package outbound

import "context"

// This file is the writeback's surface for `bridge replay --stream app`:
// the same decoding and Apply as the consumer, plus the version guard on
// its own for dry runs and a way around it for --force.

// DecodeChange parses an app.<entity>.<action> message exactly as the
// consumer does; errors are permanent (the consumer dead-letters them).
func DecodeChange(subject string, data []byte) (Change, error) {
	return decodeChange(subject, data)
}

// Stale reports whether Apply would skip ch because its version is not
// newer than the one already written back, and that version.
func (w *Writer) Stale(ctx context.Context, ch Change) (stale bool, written int64, err error) {
	prog, _, err := w.progress.get(ctx, ch.Entity, ch.ExternalID)
	if err != nil {
		return false, 0, err
	}
	return ch.Version > 0 && ch.Version <= prog.Version, prog.Version, nil
}

// ApplyForced applies ch even when its version was already written back
// (replay --force). The guard and the bookmark both key on a positive
// version: without one the change goes through, and the bookmark of a newer
// version is left where it is.
func (w *Writer) ApplyForced(ctx context.Context, ch Change) (Result, error) {
	ch.Version = 0
	return w.Apply(ctx, ch)
}
