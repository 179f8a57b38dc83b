package state

import (
	"context"
	"fmt"
	"strings"

	"github.com/nowbridge/nowbridge/internal/events"
)

// RecordIDs lists the sys_ids of table that bridge_state holds a record
// for, deleted ones included (their Deleted flag is in the value, which the
// listing does not read), in no particular order. It is a filtered key
// listing of record.<table>.*: the server sends one header-only message per
// key of the table and nothing of other tables or of the values. A record
// stored while the listing runs may or may not be in it.
func (s *Store) RecordIDs(ctx context.Context, table string) ([]string, error) {
	if !events.ValidTable(table) {
		return nil, fmt.Errorf("bridge_state: invalid table %q", table)
	}
	// The lister's goroutine stops only when drained or cancelled: cancel
	// on every way out.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	prefix := "record." + table + "."
	lister, err := s.kv.ListKeysFiltered(ctx, prefix+"*")
	if err != nil {
		return nil, fmt.Errorf("list the %s records in %s: %w", table, events.BucketState, err)
	}
	defer func() { _ = lister.Stop() }()
	seen := map[string]bool{}
	var ids []string
	for key := range lister.Keys() {
		id := strings.TrimPrefix(key, prefix)
		// A busy bucket may report a key twice.
		if !seen[id] && events.ValidSysID(id) {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	// A cancelled listing closes its channel like a finished one: a
	// partial list must not pass for the whole.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list the %s records in %s: %w", table, events.BucketState, err)
	}
	return ids, nil
}
