package status

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/attach"
	"github.com/nowbridge/nowbridge/internal/events"
)

// Attachments is the attachments' part of the screen: the bucket's
// objects and bytes, and the files the bridge keeps in sync.
type Attachments struct {
	Missing bool `json:"missing,omitempty"` // no bridge_attachments bucket (a bridge before attachments)
	Objects int  `json:"objects"`
	// Bytes are the files' own; StoredBytes the bucket's stream (chunks
	// and metadata, what it costs the server).
	Bytes       uint64        `json:"bytes"`
	StoredBytes uint64        `json:"stored_bytes"`
	Synced      attach.Counts `json:"synced"`
}

// collectAttachments reads bridge_attachments and the records' files.
func collectAttachments(ctx context.Context, js jetstream.JetStream) (*Attachments, error) {
	a := &Attachments{}
	obj, err := js.ObjectStore(ctx, events.BucketAttachments)
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		a.Missing = true
		return a, nil
	}
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w", events.BucketAttachments, err)
	}
	infos, err := obj.List(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil, fmt.Errorf("list %s: %w", events.BucketAttachments, err)
	}
	for _, i := range infos {
		a.Objects++
		a.Bytes += i.Size
	}
	if st, err := obj.Status(ctx); err == nil {
		a.StoredBytes = st.Size()
	}
	links, err := js.KeyValue(ctx, events.BucketLinks)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", events.BucketLinks, err)
	}
	if a.Synced, err = attach.Count(ctx, links); err != nil {
		return nil, err
	}
	return a, nil
}

// writeText renders the attachments' lines.
func (a *Attachments) writeText(p func(format string, args ...any), processes []Process) {
	if a == nil {
		return
	}
	p("\nATTACHMENTS\tOBJECTS\tBYTES\tSTORED\tRECORDS\tFILES\n")
	if a.Missing {
		p("%s\t(missing: start `bridge serve` once to create it)\t\t\t\t\n", events.BucketAttachments)
		return
	}
	s := a.Synced
	p("%s\t%d\t%s\t%s\t%d\t%d\n", events.BucketAttachments, a.Objects, humanBytes(a.Bytes), humanBytes(a.StoredBytes), s.Records, s.Files)
	line := fmt.Sprintf("  copies: %d in ServiceNow, %d in the app", s.SN, s.App)
	if s.Pending > 0 {
		line += fmt.Sprintf("; %d being uploaded or removed", s.Pending)
	}
	p("%s\n", line)
	for _, pr := range processes {
		if n, ok := pr.Counters["bridge_attachment_bytes_total"]; ok && n > 0 {
			p("  %s moved %s of attachments (%d dead-lettered)\n", pr.ID, humanBytes(uint64(n)), int64(pr.Counters["bridge_attachment_dead_letters_total"]))
		}
	}
}
