package outbound

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/snclient"
)

// ChoiceReader reads a choice field's active values (snclient.Client).
type ChoiceReader interface {
	Choices(ctx context.Context, table, element string) ([]snclient.Choice, error)
}

// CloseCodes picks the code a write that resolves or closes a record
// carries. A value that is not an active choice is dropped by ServiceNow
// without a word, and the data policy then refuses the write as if no code
// was sent; choice lists differ by release (the "Solved (Permanently)"
// family is gone from current ones). So the default comes from the
// instance: the first of the mapping's preferred codes that is an active
// choice, else the first active choice; an override (BRIDGE_CLOSE_CODE)
// replaces it and is checked against the same list.
type CloseCodes struct {
	reader   ChoiceReader
	override string
	ttl      time.Duration
	log      *slog.Logger

	mu    sync.Mutex
	cache map[string]choiceList // table.field -> choices
	sf    singleflight.Group
}

type choiceList struct {
	values  []string
	fetched time.Time
}

// DefaultChoiceTTL is how long a choice list is used before it is read again.
const DefaultChoiceTTL = time.Hour

// NewCloseCodes builds a CloseCodes reading choices through r; override is
// BRIDGE_CLOSE_CODE ("" picks from the instance), ttl how long a list is
// cached (0: DefaultChoiceTTL).
func NewCloseCodes(r ChoiceReader, override string, ttl time.Duration, log *slog.Logger) *CloseCodes {
	if ttl <= 0 {
		ttl = DefaultChoiceTTL
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &CloseCodes{reader: r, override: strings.TrimSpace(override), ttl: ttl, log: log, cache: map[string]choiceList{}}
}

// ErrCloseCode wraps every failure to find a close code that retrying will
// not fix: an override that is not a choice, a field without active choices.
var ErrCloseCode = mapping.ErrCloseCode

// For returns the close code a write closing a record of table sends,
// given the code the record holds now (current, "" for none or unknown): the
// record's own code while it is an active choice (a person chose it), else
// the default. When the choices cannot be read, the record's code or the
// override is used unchecked; with neither, the read error is returned.
func (c *CloseCodes) For(ctx context.Context, table string, rule *mapping.Close, current string) (string, error) {
	list, err := c.choices(ctx, table, rule.CodeField)
	if err != nil {
		fallback := current
		if fallback == "" {
			fallback = c.override
		}
		if fallback == "" {
			return "", err
		}
		c.log.WarnContext(ctx, "close code choices unreadable; sending a close code unchecked",
			"table", table, "field", rule.CodeField, "close_code", fallback, "err", err)
		return fallback, nil
	}
	if current != "" && slices.Contains(list.values, current) {
		return current, nil
	}
	return rule.Pick(table, list.values, c.override)
}

// Validate reads the choices of table's close code field and checks the
// override against them; it returns the code writes will use. A choice list
// that cannot be read is returned as an error too: the caller decides
// whether that is fatal (errors.Is(err, ErrCloseCode) only for what the
// instance's answer proves wrong).
func (c *CloseCodes) Validate(ctx context.Context, table string, rule *mapping.Close) (string, error) {
	list, err := c.choices(ctx, table, rule.CodeField)
	if err != nil {
		return "", err
	}
	return rule.Pick(table, list.values, c.override)
}

// Choices returns the active values of table.field, cached.
func (c *CloseCodes) Choices(ctx context.Context, table, field string) ([]string, error) {
	list, err := c.choices(ctx, table, field)
	if err != nil {
		return nil, err
	}
	return slices.Clone(list.values), nil
}

func (c *CloseCodes) choices(ctx context.Context, table, field string) (choiceList, error) {
	key := table + "." + field
	c.mu.Lock()
	cached, ok := c.cache[key]
	c.mu.Unlock()
	if ok && time.Since(cached.fetched) < c.ttl {
		return cached, nil
	}
	ch := c.sf.DoChan(key, func() (any, error) {
		// Shared by every waiting caller: not cut short by the first
		// one's context.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		got, err := c.reader.Choices(rctx, table, field)
		if err != nil {
			return nil, err
		}
		l := choiceList{fetched: time.Now()}
		for _, ch := range got {
			l.values = append(l.values, ch.Value)
		}
		c.mu.Lock()
		c.cache[key] = l
		c.mu.Unlock()
		return l, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			if ok {
				// A stale list beats failing resolves while sys_choice
				// cannot be read.
				c.log.WarnContext(ctx, "close code choices could not be refreshed; using the cached list", "table", table, "field", field, "err", r.Err)
				return cached, nil
			}
			return choiceList{}, r.Err
		}
		return r.Val.(choiceList), nil
	case <-ctx.Done():
		return choiceList{}, ctx.Err()
	}
}
