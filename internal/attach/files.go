package attach

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
)

// A record's files live in one bridge_links entry, "att.<table>.<sys_id>",
// written by revision: every decision about a record's attachments reads
// it, and one write records the decision's outcome, so a crash between two
// steps leaves either the old or the new state, never half of each.

// KeyPrefix prefixes the bridge_links keys of the records' files.
const KeyPrefix = "att."

// filesKey is the bridge_links key of a record's files.
func filesKey(table, sysID string) string { return KeyPrefix + table + "." + sysID }

// tombstonesMax bounds the removed ids a record remembers (oldest dropped).
const tombstonesMax = 256

// record is what the bridge knows of one record's files.
type record struct {
	Table      string `json:"table"`
	SysID      string `json:"sys_id"`
	Entity     string `json:"entity,omitempty"`
	ExternalID string `json:"external_id,omitempty"`
	Files      []file `json:"files,omitempty"`
	// Removed are ids of copies removed on either side, newest last: a
	// replay or a late redelivery of their add is stale, not new.
	Removed []removed `json:"removed,omitempty"`
}

// file is one content (one digest) on the record, with every copy of it on
// each side.
type file struct {
	Digest      string `json:"digest"` // SHA-256=<base64url>, the object store's
	Object      string `json:"object"` // where its bytes are in bridge_attachments
	FileName    string `json:"file_name,omitempty"`
	ContentType string `json:"content_type,omitempty"`
	Size        int64  `json:"size"`
	// SN are the ServiceNow attachments holding it.
	SN []string `json:"sn,omitempty"`
	// App are the app's attachment ids holding it; "" is the copy the
	// bridge handed the app (its id is the app's business).
	App []string `json:"app,omitempty"`
	// Announced is the ServiceNow attachment the app was handed this file
	// as ("" when the app had it first).
	Announced string `json:"announced,omitempty"`
	// Uploading is the app id whose upload to ServiceNow may have been
	// made and not recorded (set before the upload, cleared after): a
	// retry looks for it on the record before uploading again, and its
	// webhook is the bridge's own.
	Uploading string `json:"uploading,omitempty"`
	// Removing is set before the bridge deletes the ServiceNow copies of
	// a file the app removed: their webhooks are the bridge's own.
	Removing bool `json:"removing,omitempty"`
}

// removed is a copy removed for good.
type removed struct {
	Side string `json:"side"` // sideSN or sideApp
	ID   string `json:"id"`
}

const (
	sideSN  = "sn"
	sideApp = "app"
)

func (f *file) appHas() bool { return len(f.App) > 0 }

// bySN is the file ServiceNow's attachment id holds, or nil.
func (r *record) bySN(id string) *file {
	for i := range r.Files {
		if slices.Contains(r.Files[i].SN, id) {
			return &r.Files[i]
		}
	}
	return nil
}

// byApp is the file the app's attachment id holds, or nil.
func (r *record) byApp(id string) *file {
	for i := range r.Files {
		if slices.Contains(r.Files[i].App, id) {
			return &r.Files[i]
		}
	}
	return nil
}

// byDigest is the file of that content, or nil.
func (r *record) byDigest(d string) *file {
	for i := range r.Files {
		if r.Files[i].Digest == d {
			return &r.Files[i]
		}
	}
	return nil
}

// add appends a new file and returns it.
func (r *record) add(f file) *file {
	r.Files = append(r.Files, f)
	return &r.Files[len(r.Files)-1]
}

// drop removes the file of that digest.
func (r *record) drop(d string) {
	r.Files = slices.DeleteFunc(r.Files, func(f file) bool { return f.Digest == d })
}

// tombstone remembers that a copy is gone for good.
func (r *record) tombstone(side, id string) {
	if id == "" || r.removedHas(side, id) {
		return
	}
	r.Removed = append(r.Removed, removed{Side: side, ID: id})
	if over := len(r.Removed) - tombstonesMax; over > 0 {
		r.Removed = slices.Delete(r.Removed, 0, over)
	}
}

func (r *record) removedHas(side, id string) bool {
	return slices.Contains(r.Removed, removed{Side: side, ID: id})
}

// without returns ids less one occurrence of id; ok is false when id is
// not there.
func without(ids []string, id string) (out []string, ok bool) {
	i := slices.Index(ids, id)
	if i < 0 {
		return ids, false
	}
	return slices.Delete(slices.Clone(ids), i, i+1), true
}

// files reads and writes records' files in bridge_links.
type files struct{ kv jetstream.KeyValue }

// load reads a record's files; rev is 0 when the bridge knows none.
func (s files) load(ctx context.Context, table, sysID string) (record, uint64, error) {
	e, err := s.kv.Get(ctx, filesKey(table, sysID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return record{Table: table, SysID: sysID}, 0, nil
	}
	if err != nil {
		return record{}, 0, fmt.Errorf("read the attachments of %s/%s from %s: %w", table, sysID, events.BucketLinks, err)
	}
	var r record
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return record{}, 0, fmt.Errorf("decode the attachments of %s/%s from %s: %w (delete the key %s to start the record over)", table, sysID, events.BucketLinks, err, filesKey(table, sysID))
	}
	return r, e.Revision(), nil
}

// save writes r if it is still at rev (0: not there yet) and returns the
// new revision. A concurrent write is an error worth retrying: the handler
// runs again on what is stored.
func (s files) save(ctx context.Context, r *record, rev uint64) (uint64, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return 0, err
	}
	key := filesKey(r.Table, r.SysID)
	if rev == 0 {
		rev, err = s.kv.Create(ctx, key, b)
	} else {
		rev, err = s.kv.Update(ctx, key, b, rev)
	}
	if err != nil {
		return 0, fmt.Errorf("write the attachments of %s/%s to %s: %w", r.Table, r.SysID, events.BucketLinks, err)
	}
	return rev, nil
}
