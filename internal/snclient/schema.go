package snclient

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// systemFields exist on every table; they are accepted even when the
// dictionary read does not list them (they live on the base table).
var systemFields = []string{"sys_id", "sys_created_on", "sys_created_by", "sys_updated_on", "sys_updated_by", "sys_mod_count", "sys_class_name", "sys_domain"}

type tableFields struct {
	names  map[string]bool
	source string
	loaded time.Time
}

type schemaCache struct {
	mu     sync.Mutex
	tables map[string]*tableFields
	sf     singleflight.Group
}

func newSchemaCache() *schemaCache { return &schemaCache{tables: map[string]*tableFields{}} }

// checkFields returns a *FieldError when any name (dot-walks checked by
// their first segment) is not a field of table.
func (c *Client) checkFields(ctx context.Context, table string, names []string) error {
	if c.cfg.SkipFieldValidation || len(names) == 0 {
		return nil
	}
	tf, err := c.tableFields(ctx, table)
	if err != nil {
		return err
	}
	var unknown []string
	for _, n := range names {
		first, _, _ := strings.Cut(n, ".")
		if !tf.names[first] && !slices.Contains(unknown, n) {
			unknown = append(unknown, n)
		}
	}
	if len(unknown) > 0 {
		return &FieldError{Table: table, Unknown: unknown, Source: tf.source}
	}
	return nil
}

// Fields returns the field names queries on table may use: the configured
// known fields, or what sys_dictionary lists for the table and the tables
// it extends.
func (c *Client) Fields(ctx context.Context, table string) ([]string, error) {
	tf, err := c.tableFields(ctx, table)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(tf.names))
	for n := range tf.names {
		out = append(out, n)
	}
	slices.Sort(out)
	return out, nil
}

func (c *Client) tableFields(ctx context.Context, table string) (*tableFields, error) {
	if known, ok := c.cfg.KnownFields[table]; ok {
		return newTableFields(known, "configured known fields"), nil
	}
	s := c.schema
	s.mu.Lock()
	tf := s.tables[table]
	s.mu.Unlock()
	if tf != nil && time.Since(tf.loaded) < c.cfg.SchemaTTL {
		return tf, nil
	}
	ch := s.sf.DoChan(table, func() (any, error) {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.RetryMaxElapsed+c.cfg.RequestTimeout)
		defer cancel()
		names, err := c.loadDictionary(lctx, table)
		if err != nil {
			return nil, err
		}
		tf := newTableFields(names, "sys_dictionary")
		s.mu.Lock()
		s.tables[table] = tf
		s.mu.Unlock()
		return tf, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			if tf != nil {
				// A stale list beats failing every query while
				// sys_dictionary is unreachable.
				c.log.WarnContext(ctx, "servicenow sys_dictionary reload failed; using the cached fields", "table", table, "error", r.Err)
				return tf, nil
			}
			return nil, r.Err
		}
		return r.Val.(*tableFields), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func newTableFields(names []string, source string) *tableFields {
	tf := &tableFields{names: map[string]bool{}, source: source, loaded: time.Now()}
	for _, n := range names {
		tf.names[n] = true
	}
	for _, n := range systemFields {
		tf.names[n] = true
	}
	return tf
}

// loadDictionary reads the element names of table and its parents from
// sys_dictionary (GET /api/now/table/sys_dictionary?sysparm_query=name=<table>
// &sysparm_fields=element). The table's own row has an empty element.
func (c *Client) loadDictionary(ctx context.Context, table string) ([]string, error) {
	conds := []Cond{Field("name").EQ(table)}
	for _, p := range c.cfg.TableParents[table] {
		conds = append(conds, Field("name").EQ(p))
	}
	opts := ListOptions{Query: And(Or(conds...)), Fields: []string{"element"}, Limit: 10000}
	var names []string
	for {
		page, err := c.list(ctx, "sys_dictionary", opts, false)
		if err != nil {
			return nil, fmt.Errorf("reading the fields of %s from sys_dictionary (grant the OAuth application user read on sys_dictionary, or configure the table's known fields): %w", table, err)
		}
		for _, r := range page.Records {
			if e := r.Get("element"); e != "" {
				names = append(names, e)
			}
		}
		if !page.HasNext {
			break
		}
		opts.Offset = page.NextOffset
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("sys_dictionary lists no fields for table %s: the table does not exist, or the OAuth application user cannot read sys_dictionary (grant it, or configure the table's known fields)", table)
	}
	return names, nil
}
