// Package dedupe suppresses echo loops in bidirectional sync. It remembers the
// record versions the bridge itself wrote to ServiceNow (and the field values
// it handed to the SaaS app), so the webhook or app event those writes cause
// is recognised as our own echo instead of being synced back again.
package dedupe

import (
	"hash/fnv"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
)

// Directions label the echo metrics.
const (
	DirServiceNow = "servicenow" // a webhook caused by our own ServiceNow write
	DirSaaS       = "saas"       // an app event caused by our own apply
)

// Config sizes the cache.
type Config struct {
	Size int           // entries per LRU (default 100,000)
	TTL  time.Duration // how long a written version is remembered (default 1h)
	// PendingTTL bounds how long a write in flight waits for its response
	// before it stops matching webhooks (default 2m).
	PendingTTL time.Duration
	// Tables says what the platform does with each table's fields and
	// which field links a record to the app (*mapping.Set). A webhook's
	// change to a derived field never makes it "not ours"; a written
	// journal field matches whatever the event renders; an insert may list
	// the fields it fills. Nil, or a table it does not map: only system
	// fields are known, so fewer webhooks are matched (the app then gets
	// its own change back once, never loses one).
	Tables     Tables
	Registerer prometheus.Registerer
	// Now is the clock TTLs are measured with (default time.Now).
	Now func() time.Time
}

// Tables gives the mapping of a ServiceNow table; *mapping.Set satisfies it.
type Tables interface {
	ForTable(table string) (*mapping.Table, bool)
}

// unmapped stands in for a table the cache has no mapping of: system
// fields only, no link field.
var unmapped = &mapping.Table{}

// Cache is safe for concurrent use.
type Cache struct {
	// TTLs are checked on read rather than by the expirable LRU, whose
	// janitor goroutine cannot be stopped: expired entries just age out.
	written *lru.Cache[verKey, int64]   // table:sys_id:mod_count of our own writes -> expiry (unix ns)
	applied *lru.Cache[string, applied] // entity:id -> fields the app was last told (and their hash)
	ttl     time.Duration
	tables  Tables
	now     func() time.Time
	pendTTL time.Duration

	mu      sync.Mutex
	pending map[pendKey][]*Pending // table:sys_id or table#correlation -> writes in flight

	echoes    *prometheus.CounterVec
	evictions prometheus.Counter
	entries   prometheus.GaugeFunc
}

// New builds a cache; metrics are registered when cfg.Registerer is set.
func New(cfg Config) *Cache {
	if cfg.Size <= 0 {
		cfg.Size = 100_000
	}
	if cfg.TTL <= 0 {
		cfg.TTL = time.Hour
	}
	if cfg.PendingTTL <= 0 {
		cfg.PendingTTL = 2 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Cache{
		tables:  cfg.Tables,
		now:     cfg.Now,
		pendTTL: cfg.PendingTTL,
		pending: make(map[pendKey][]*Pending),
		echoes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_echoes_suppressed_total",
			Help: "Changes recognised as the bridge's own echo and not synced back, by direction.",
		}, []string{"direction"}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_dedupe_evictions_total",
			Help: "Entries evicted from the echo-suppression LRU by size before their TTL (raise BRIDGE_DEDUPE_SIZE if this grows).",
		}),
	}
	c.ttl = cfg.TTL
	c.written, _ = lru.New[verKey, int64](cfg.Size) // only fails for size <= 0
	c.applied, _ = lru.New[string, applied](cfg.Size)
	c.entries = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "bridge_dedupe_entries",
		Help: "Entries in the echo-suppression LRU.",
	}, func() float64 { return float64(c.written.Len() + c.applied.Len()) })
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(c.echoes, c.evictions, c.entries)
	}
	return c
}

// table is the mapping of a ServiceNow table, or unmapped.
func (c *Cache) table(name string) *mapping.Table {
	if c.tables != nil {
		if t, ok := c.tables.ForTable(name); ok {
			return t
		}
	}
	return unmapped
}

// verKey identifies one version of a record. A struct key costs no
// allocation on the ingest hot path (a concatenated string did).
type verKey struct {
	table, sysID string
	modCount     int64
}

func versionKey(table, sysID string, modCount int64) verKey {
	return verKey{table, sysID, modCount}
}

// pendKey finds writes in flight: by sys_id, or by correlation id for inserts.
type pendKey struct {
	table, id string
	byCorr    bool
}

// RecordWrite remembers that the bridge's own write produced this version.
func (c *Cache) RecordWrite(table, sysID string, modCount int64) {
	if c.written.Add(versionKey(table, sysID, modCount), c.now().Add(c.ttl).UnixNano()) {
		c.evictions.Inc() // capacity eviction, not TTL expiry
	}
}

// Forget drops a recorded version: the writeback un-claims a write whose
// version carries changes the app has not seen, so its webhook (or reconcile)
// delivers them.
func (c *Cache) Forget(table, sysID string, modCount int64) {
	c.written.Remove(versionKey(table, sysID, modCount))
}

// Wrote reports whether the bridge itself wrote this version (reconcile uses
// it so as not to resurrect our own writes).
func (c *Cache) Wrote(table, sysID string, modCount int64) bool {
	exp, ok := c.written.Peek(versionKey(table, sysID, modCount))
	return ok && c.now().UnixNano() < exp
}

// Pending is a write to ServiceNow in flight. Call Done with the version the
// response reports, or Cancel when the write failed.
type Pending struct {
	c      *Cache
	table  string
	keys   []pendKey
	fields map[string]string
	// unchanged holds values the write leaves as they are (what the app
	// knows of the record's other fields): an event showing something else
	// there carries news, a computed side effect or someone else's change.
	unchanged map[string]string
	expires   time.Time
	// version is the only sys_mod_count a webhook may carry to match
	// (anyVersion: any). The writeback claims an update only when it is the
	// next version after the one the bridge knew; a webhook answered as an
	// echo for any other version would be lost to the app, since the write
	// is then not claimed and nothing else carries that version.
	version int64
	matched int64 // the version a webhook matched with, -1 while none has
}

// anyVersion lets a pending write match a webhook of any version (inserts,
// whose first version the bridge cannot know in advance).
const anyVersion int64 = -2

// BeginWrite registers a write before it is sent, so a webhook that arrives
// before the response (fast business rules) is still recognised. sysID is
// empty for an insert; correlation (the external id written to
// correlation_id) then identifies it.
func (c *Cache) BeginWrite(table, sysID, correlation string, fields map[string]string) *Pending {
	return c.BeginWriteWith(table, sysID, correlation, fields, nil)
}

// BeginWriteWith is BeginWrite for a write that must leave the unchanged
// values as they are: a webhook showing another value in one of them is not
// (only) ours and is not matched as an echo.
func (c *Cache) BeginWriteWith(table, sysID, correlation string, fields, unchanged map[string]string) *Pending {
	return c.begin(table, sysID, correlation, anyVersion, fields, unchanged)
}

// BeginUpdate is BeginWriteWith for an update that counts as the bridge's
// own only if it produces exactly version (the one after the version the
// bridge last knew): a webhook of another version is never matched, because
// that version holds changes the app has not seen and must reach it. A
// negative version matches no webhook (the bridge knows no base version).
func (c *Cache) BeginUpdate(table, sysID string, version int64, fields, unchanged map[string]string) *Pending {
	if version < 0 {
		version = -1 // sys_mod_count is never negative: nothing matches
	}
	return c.begin(table, sysID, "", version, fields, unchanged)
}

func (c *Cache) begin(table, sysID, correlation string, version int64, fields, unchanged map[string]string) *Pending {
	p := &Pending{c: c, table: table, fields: fields, unchanged: unchanged, expires: c.now().Add(c.pendTTL), version: version, matched: -1}
	if sysID != "" {
		p.keys = append(p.keys, pendKey{table, sysID, false})
	}
	if correlation != "" {
		p.keys = append(p.keys, pendKey{table, correlation, true})
	}
	c.mu.Lock()
	for _, k := range p.keys {
		c.pending[k] = append(c.pending[k], p)
	}
	c.mu.Unlock()
	return p
}

// Done records the version the write produced and ends the pending state.
func (p *Pending) Done(sysID string, modCount int64) {
	p.c.RecordWrite(p.table, sysID, modCount)
	p.c.removePending(p)
}

// Cancel ends the pending state of a write that failed.
func (p *Pending) Cancel() { p.c.removePending(p) }

// Matched reports the version of a webhook already answered as this write's
// echo before the write was settled.
func (p *Pending) Matched() (modCount int64, ok bool) {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	return p.matched, p.matched >= 0
}

func (c *Cache) removePending(p *Pending) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range p.keys {
		list := slices.DeleteFunc(c.pending[k], func(q *Pending) bool { return q == p })
		if len(list) == 0 {
			delete(c.pending, k)
		} else {
			c.pending[k] = list
		}
	}
}

// IsEcho reports whether a ServiceNow event was caused by the bridge's own
// write: a version we recorded, or a write still in flight whose fields the
// event's changed fields match. A match is counted in the echo metric.
func (c *Cache) IsEcho(ev *events.SNEvent) bool { return c.IsEchoOf(ev, nil) }

// IsEchoOf is IsEcho for an event whose record is read on demand: record,
// when not nil, returns it, and is called only when a write in flight must
// be compared with the event (the receiver leaves most records unread).
func (c *Cache) IsEchoOf(ev *events.SNEvent, record func() events.Fields) bool {
	mc := int64(ev.SysModCount)
	if exp, ok := c.written.Get(versionKey(ev.Table, ev.SysID, mc)); ok && c.now().UnixNano() < exp {
		c.echoes.WithLabelValues(DirServiceNow).Inc()
		return true
	}
	if c.matchPending(ev, record) {
		c.RecordWrite(ev.Table, ev.SysID, mc)
		c.echoes.WithLabelValues(DirServiceNow).Inc()
		return true
	}
	return false
}

func (c *Cache) matchPending(ev *events.SNEvent, record func() events.Fields) bool {
	if ev.Action == events.ActionDelete {
		// A delete's webhook is matched by version only: its record may be empty.
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, p := range c.pending[pendKey{ev.Table, ev.SysID, false}] {
			if p.fields == nil && c.now().Before(p.expires) {
				p.matched = int64(ev.SysModCount)
				return true
			}
		}
		return false
	}
	now := c.now()
	mc := int64(ev.SysModCount)
	t := c.table(ev.Table)
	var rec events.Fields
	read := false
	fields := func() events.Fields {
		if !read {
			rec, read = ev.Record, true
			if record != nil {
				rec = record()
			}
		}
		return rec
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.pending[pendKey{ev.Table, ev.SysID, false}] {
		if now.Before(p.expires) && p.fields != nil && (p.version == anyVersion || p.version == mc) &&
			fieldsMatch(t, p.fields, fields(), ev.Changed) && unchangedMatch(t, p.unchanged, fields()) {
			p.matched = mc
			return true
		}
	}
	// An insert is matched by the external id we wrote to the link field:
	// the platform fills number, defaults and audit fields, so "changed"
	// lists more than we sent, but every value we sent must be there.
	if t.LinkField == "" || ev.Action != events.ActionInsert {
		return false
	}
	if corr := fields()[t.LinkField]; corr != "" {
		for _, p := range c.pending[pendKey{ev.Table, corr, true}] {
			if now.Before(p.expires) && p.fields != nil && insertMatch(t, p.fields, fields(), ev.Changed) {
				p.matched = mc
				return true
			}
		}
	}
	return false
}

// valueMatch compares a written value with the event's; a journal field
// matches when the event renders it empty or as entries holding our text.
func valueMatch(t *mapping.Table, field, written, got string) bool {
	if got == written {
		return true
	}
	return t.Kind(field).Journal() && (got == "" || strings.Contains(got, written))
}

// fieldsMatch: the event holds every value we wrote (a value ServiceNow did
// not keep is news for the app), and every field it says changed was written
// by us (derived fields aside).
func fieldsMatch(t *mapping.Table, written, record map[string]string, changed []string) bool {
	for f, v := range written {
		if got, ok := record[f]; ok && !valueMatch(t, f, v, got) {
			return false
		}
	}
	for _, f := range changed {
		if _, ours := written[f]; !ours && !t.Kind(f).Derived() {
			return false
		}
	}
	return true
}

// unchangedMatch: the event shows every value the write was to leave alone.
func unchangedMatch(t *mapping.Table, unchanged, record map[string]string) bool {
	for f, v := range unchanged {
		if got, ok := record[f]; ok && got != v && !t.Kind(f).Journal() {
			return false
		}
	}
	return true
}

// insertMatch: every value we sent is in the inserted record, and every
// other changed field is one the platform fills on insert (or derived).
func insertMatch(t *mapping.Table, written, record map[string]string, changed []string) bool {
	for f, v := range written {
		if got, ok := record[f]; ok && !valueMatch(t, f, v, got) {
			return false
		}
	}
	for _, f := range changed {
		if _, ours := written[f]; ours || record[f] == "" {
			continue
		}
		if k := t.Kind(f); !k.Derived() && !k.FilledOnInsert() {
			return false
		}
	}
	return true
}

// RecordApplied remembers the SaaS-side fields the apply pipeline handed to
// the app for an entity id, so the app republishing exactly that is ignored
// and the writeback knows what the app was last told (the base of its diff,
// fresher than bridge_state, which apply writes only after the app has the
// message). It also remembers when, and the values the hand-over replaced,
// for LastHandOver.
func (c *Cache) RecordApplied(entity, id string, fields map[string]string) {
	now := c.now()
	key := entity + ":" + id
	var replaced map[string]string
	if a, ok := c.applied.Peek(key); ok && now.UnixNano() < a.expires {
		for f, v := range fields {
			if old, had := a.fields[f]; had && old != v {
				if replaced == nil {
					replaced = map[string]string{}
				}
				replaced[f] = old
			}
		}
	}
	c.applied.Add(key, applied{hash: HashFields(fields), fields: maps.Clone(fields), expires: now.Add(c.ttl).UnixNano(), told: now.UnixNano(), replaced: replaced})
}

// MergeApplied records that the app now holds fields on top of what it was
// last told: the writeback calls it with the app's own values once they are
// in ServiceNow. It is not a hand-over: the time of the last one stays, and
// of the values it replaced only those the app has not set itself since.
func (c *Cache) MergeApplied(entity, id string, fields map[string]string) {
	now := c.now()
	key := entity + ":" + id
	merged := map[string]string{}
	var told int64
	var replaced map[string]string
	if a, ok := c.applied.Peek(key); ok && now.UnixNano() < a.expires {
		maps.Copy(merged, a.fields)
		told = a.told
		for f, v := range a.replaced {
			if _, set := fields[f]; !set {
				if replaced == nil {
					replaced = map[string]string{}
				}
				replaced[f] = v
			}
		}
	}
	maps.Copy(merged, fields)
	c.applied.Add(key, applied{hash: HashFields(merged), fields: merged, expires: now.Add(c.ttl).UnixNano(), told: told, replaced: replaced})
}

// Applied returns a copy of the fields the app was last known to hold.
func (c *Cache) Applied(entity, id string) (map[string]string, bool) {
	a, ok := c.applied.Peek(entity + ":" + id)
	if !ok || c.now().UnixNano() >= a.expires {
		return nil, false
	}
	return maps.Clone(a.fields), true
}

// HandOver is the last version of an entity id the apply pipeline handed
// the app.
type HandOver struct {
	At time.Time
	// Replaced holds, for each field the hand-over changed, the value the
	// app held before it. An app change carrying that old value was built
	// before the app took the hand-over (or deliberately sets it back).
	Replaced map[string]string
}

// LastHandOver returns the last hand-over to the app of an entity id.
func (c *Cache) LastHandOver(entity, id string) (HandOver, bool) {
	a, ok := c.applied.Peek(entity + ":" + id)
	if !ok || c.now().UnixNano() >= a.expires || a.told == 0 {
		return HandOver{}, false
	}
	return HandOver{At: time.Unix(0, a.told), Replaced: maps.Clone(a.replaced)}, true
}

// IsAppEcho reports whether an app change carries exactly the fields the
// bridge last applied to that entity id (counted in the echo metric).
func (c *Cache) IsAppEcho(entity, id string, fields map[string]string) bool {
	a, ok := c.applied.Get(entity + ":" + id)
	if ok && c.now().UnixNano() < a.expires && a.hash == HashFields(fields) {
		c.echoes.WithLabelValues(DirSaaS).Inc()
		return true
	}
	return false
}

type applied struct {
	hash    uint64
	fields  map[string]string
	expires int64
	told    int64 // when the apply pipeline last handed the app a version (unix ns); 0: never
	// replaced: the values that hand-over changed, as the app held them before
	replaced map[string]string
}

// Len is the number of entries held (both directions).
func (c *Cache) Len() int { return c.written.Len() + c.applied.Len() }

// HashFields is an order-independent FNV-1a hash of field names and values.
func HashFields(fields map[string]string) uint64 {
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	h := fnv.New64a()
	for _, k := range keys {
		h.Write([]byte(k))
		h.Write([]byte{0})
		h.Write([]byte(fields[k]))
		h.Write([]byte{0})
	}
	return h.Sum64()
}
