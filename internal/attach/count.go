package attach

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
)

// Counts are the attachments the bridge keeps in sync (bridge status).
type Counts struct {
	Records int `json:"records"` // records with synced files
	Files   int `json:"files"`   // contents synced (one file on one record, however many copies)
	// SN and App count the copies on each side: the same file twice on one
	// side is two copies of one file.
	SN  int `json:"servicenow_copies"`
	App int `json:"app_copies"`
	// Pending are files the bridge is uploading or removing right now (or
	// was when a process stopped).
	Pending int `json:"pending,omitempty"`
}

// Count reads every record's files from bridge_links.
func Count(ctx context.Context, links jetstream.KeyValue) (Counts, error) {
	var c Counts
	lister, err := links.ListKeysFiltered(ctx, KeyPrefix+">")
	if err != nil {
		return c, fmt.Errorf("list the records' files in %s: %w", events.BucketLinks, err)
	}
	for key := range lister.Keys() {
		e, err := links.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // removed since the listing
		}
		if err != nil {
			return c, fmt.Errorf("read %s from %s: %w", key, events.BucketLinks, err)
		}
		var r record
		if json.Unmarshal(e.Value(), &r) != nil || len(r.Files) == 0 {
			continue
		}
		c.Records++
		for _, f := range r.Files {
			c.Files++
			c.SN += len(f.SN)
			c.App += len(f.App)
			if f.Uploading != "" || f.Removing {
				c.Pending++
			}
		}
	}
	return c, nil
}
