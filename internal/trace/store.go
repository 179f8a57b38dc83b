package trace

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/jsonw"
	"github.com/nowbridge/nowbridge/internal/state"
)

// ErrNotFound is returned when no record, number or app id matches a key.
var ErrNotFound = errors.New("not found")

// Store reads records' stories back: the entries of BRIDGE_TRACE under the
// record's subject (and its app id's), the messages they point at, and the
// record's bridge_state and bridge_links entries. Every read is by subject
// or by sequence: nothing scans a stream.
type Store struct {
	js     jetstream.JetStream
	nc     *nats.Conn
	api    string // the JetStream API prefix, "$JS.API" unless a domain or prefix says otherwise
	states *state.Store
	links  *state.Links
}

// NewStore reads through js (its connection serves the direct gets).
func NewStore(js jetstream.JetStream, states *state.Store, links *state.Links) *Store {
	api := jetstream.DefaultAPIPrefix
	if o := js.Options(); o.APIPrefix != "" {
		api = o.APIPrefix
	} else if o.Domain != "" {
		api = "$JS." + o.Domain + ".API."
	}
	return &Store{js: js, nc: js.Conn(), api: strings.TrimSuffix(api, "."), states: states, links: links}
}

// Timeline is a record's story: what the bridge knows of it now (State:
// RecordState) and each step, oldest first.
type Timeline struct {
	Key        string `json:"key"` // what was asked for
	Table      string `json:"table,omitempty"`
	SysID      string `json:"sys_id,omitempty"`
	Number     string `json:"number,omitempty"`
	Entity     string `json:"entity,omitempty"`
	ExternalID string `json:"external_id,omitempty"`
	State      any    `json:"state"` // RecordState
	Steps      []Step `json:"steps"`
}

// RecordState is the record's bridge_state and bridge_links entries.
type RecordState struct {
	// State is bridge_state's record.<table>.<sys_id>: the last version
	// applied to the app or written by the bridge. Nil: none.
	State *state.Record `json:"bridge_state"`
	// Link is bridge_links' entry: the app id the record is linked to.
	// Nil: not linked.
	Link *Link `json:"bridge_links"`
}

// Link is a bridge_links entry.
type Link struct {
	Entity     string `json:"entity"`
	ExternalID string `json:"external_id"`
	Table      string `json:"table,omitempty"`
	SysID      string `json:"sys_id,omitempty"`
}

// Step is one step of a timeline: a decision from the log, or the storing
// of a message a decision is about (Decision "stored").
type Step struct {
	Time     time.Time `json:"time"`
	Stage    string    `json:"stage"`
	Source   string    `json:"source,omitempty"`
	Decision string    `json:"decision"`
	Reason   string    `json:"reason,omitempty"`
	Hint     string    `json:"hint,omitempty"`
	Action   string    `json:"action,omitempty"`
	// Version is ServiceNow's sys_mod_count (NoVersion, -1: none);
	// AppVersion the app change's version (0: none).
	Version    int64 `json:"version"`
	AppVersion int64 `json:"app_version,omitempty"`
	// Stream and Seq name the message the step is about (empty: none);
	// Message is its body, fetched by sequence (JSON, or a JSON string),
	// and MessageGone says the stream no longer holds it (its retention).
	Stream      string          `json:"stream,omitempty"`
	Seq         uint64          `json:"seq,omitempty"`
	Message     json.RawMessage `json:"message,omitempty"`
	MessageGone bool            `json:"message_gone,omitempty"`
	// Refs are every message the decision names (Stream/Seq is the first).
	Refs []Ref `json:"refs,omitempty"`

	header nats.Header // the fetched message's headers
}

// resolved is what a key names.
type resolved struct {
	table, sysID, number, entity, externalID string
}

// numberRe is what a record number looks like: INC0010006, CHG0030001.
var numberRe = regexp.MustCompile(`^[A-Z]{2,}[0-9]+$`)

// Resolve finds the record key names: a record number (through the number
// index the log keeps), a sys_id (through BRIDGE_TRACE's and bridge_state's
// subjects) or an app external id (through bridge_links). For an app id
// never linked to a record, table and sysID are empty and err is nil: its
// timeline holds the app's side only. A key matching nothing is ErrNotFound.
func (s *Store) Resolve(ctx context.Context, key string) (table, sysID string, err error) {
	r, err := s.resolve(ctx, key)
	return r.table, r.sysID, err
}

func (s *Store) resolve(ctx context.Context, key string) (resolved, error) {
	key = strings.TrimSpace(key)
	if key == "" {
		return resolved{}, fmt.Errorf("%w: an empty key (give an incident number, a sys_id or an app external id)", ErrNotFound)
	}
	steps := []func(context.Context, string) (resolved, bool, error){s.byExternalID}
	switch {
	case events.ValidSysID(key):
		steps = append([]func(context.Context, string) (resolved, bool, error){s.bySysID}, steps...)
	case numberRe.MatchString(key):
		steps = append([]func(context.Context, string) (resolved, bool, error){s.byNumber}, steps...)
	}
	for _, step := range steps {
		r, ok, err := step(ctx, key)
		if err != nil || ok {
			return r, err
		}
	}
	return resolved{}, fmt.Errorf("%w: %q is no record number, sys_id or app external id the bridge has recorded (numbers are known once a record's event was applied; entries older than %s are gone)",
		ErrNotFound, key, events.TraceMaxAge)
}

// bySysID finds the table of a sys_id among BRIDGE_TRACE's record
// subjects, else bridge_state's or bridge_links' keys.
func (s *Store) bySysID(ctx context.Context, sysID string) (resolved, bool, error) {
	for _, q := range []struct{ stream, filter string }{
		{events.StreamTrace, subjectPrefix + "*." + sysID},
		{"KV_" + events.BucketState, "$KV." + events.BucketState + ".record.*." + sysID},
		{"KV_" + events.BucketLinks, "$KV." + events.BucketLinks + ".rec.*." + sysID},
	} {
		subjects, err := s.subjects(ctx, q.stream, q.filter)
		if err != nil {
			return resolved{}, false, err
		}
		for _, subj := range subjects {
			parts := strings.Split(subj, ".")
			table := parts[len(parts)-2]
			if events.ValidTable(table) && table != "app" {
				r := resolved{table: table, sysID: sysID}
				return r, true, s.linkOf(ctx, &r)
			}
		}
	}
	return resolved{}, false, nil
}

// byNumber reads the number index entry.
func (s *Store) byNumber(ctx context.Context, number string) (resolved, bool, error) {
	m, err := s.lastFor(ctx, events.StreamTrace, NumberSubject(number))
	if err != nil || m == nil {
		return resolved{}, false, err
	}
	var idx struct {
		Table string `json:"table"`
		SysID string `json:"sys_id"`
	}
	if json.Unmarshal(m.Data, &idx) != nil || !events.ValidTable(idx.Table) || !events.ValidSysID(idx.SysID) {
		return resolved{}, false, nil
	}
	r := resolved{table: idx.Table, sysID: idx.SysID, number: number}
	return r, true, s.linkOf(ctx, &r)
}

// byExternalID finds the entity of an app id among bridge_links' keys,
// and its record there; else among BRIDGE_TRACE's app subjects (an id
// not linked).
func (s *Store) byExternalID(ctx context.Context, id string) (resolved, bool, error) {
	subjects, err := s.subjects(ctx, "KV_"+events.BucketLinks, "$KV."+events.BucketLinks+".ext.*."+base64.RawURLEncoding.EncodeToString([]byte(id)))
	if err != nil {
		return resolved{}, false, err
	}
	for _, subj := range subjects {
		parts := strings.Split(subj, ".")
		entity := parts[len(parts)-2]
		table, sysID, ok, err := s.links.SysID(ctx, entity, id)
		if err != nil {
			return resolved{}, false, err
		}
		if ok {
			return resolved{table: table, sysID: sysID, entity: entity, externalID: id}, true, nil
		}
	}
	subjects, err = s.subjects(ctx, events.StreamTrace, appPrefix+"*."+Token(id))
	if err != nil || len(subjects) == 0 {
		return resolved{}, false, err
	}
	parts := strings.Split(subjects[0], ".")
	return resolved{entity: parts[len(parts)-2], externalID: id}, true, nil
}

// linkOf completes r with the app id its record is linked to.
func (s *Store) linkOf(ctx context.Context, r *resolved) error {
	entity, ext, ok, err := s.links.ExternalID(ctx, r.table, r.sysID)
	if ok {
		r.entity, r.externalID = entity, ext
	}
	return err
}

// maxEntries bounds the entries read per subject (the stream keeps
// events.TraceMaxPerRecord; more only after the limit was raised).
const maxEntries = 5000

// Timeline resolves key and reads its record's story: the entries under
// its record subject and under its app id's subject, in time order, each
// with the message it names fetched by sequence, and a "stored" step for
// each SN_EVENTS or APP_EVENTS message a decision was about.
func (s *Store) Timeline(ctx context.Context, key string) (*Timeline, error) {
	r, err := s.resolve(ctx, key)
	if err != nil {
		return nil, err
	}
	tl := &Timeline{Key: strings.TrimSpace(key), Table: r.table, SysID: r.sysID, Number: r.number, Entity: r.entity, ExternalID: r.externalID, Steps: []Step{}}
	var subjects []string
	if r.sysID != "" {
		subjects = append(subjects, RecordSubject(r.table, r.sysID))
	}
	if r.externalID != "" {
		subjects = append(subjects, AppSubject(r.entity, r.externalID))
	}
	var entries []Entry
	for _, subj := range subjects {
		msgs, err := s.readSubject(ctx, events.StreamTrace, subj, maxEntries)
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			e, err := decodeEntry(m.Data)
			if err != nil {
				continue // not an entry this version can read
			}
			entries = append(entries, e)
		}
	}
	rs := RecordState{}
	if r.sysID != "" {
		rec, _, ok, err := s.states.Get(ctx, r.table, r.sysID)
		if err != nil {
			return nil, err
		}
		if ok {
			rs.State = &rec
			if tl.Number == "" {
				tl.Number = rec.Fields["number"]
			}
		}
	}
	if r.externalID != "" && r.sysID != "" {
		rs.Link = &Link{Entity: r.entity, ExternalID: r.externalID, Table: r.table, SysID: r.sysID}
	}
	tl.State = rs
	for _, e := range entries {
		if tl.Number == "" && e.Number != "" {
			tl.Number = e.Number
		}
		if tl.Entity == "" && e.Entity != "" {
			tl.Entity, tl.ExternalID = e.Entity, e.ExternalID
		}
	}
	tl.Steps = steps(entries)
	if err := s.fetchMessages(ctx, tl.Steps); err != nil {
		return nil, err
	}
	for i := range tl.Steps {
		st := &tl.Steps[i]
		if st.Decision == Stored && st.header != nil {
			st.Source = snSource(st.header.Get(events.HeaderSource), st.header.Get(headerRetryOf) != "")
			if st.Stream == events.StreamApp {
				st.Source = SourceApp
				if st.header.Get(headerRetryOf) != "" {
					st.Source = SourceDLQRetry
				}
			}
		}
	}
	return tl, nil
}

// steps turns entries into steps in time order, adding the storing of each
// SN_EVENTS and APP_EVENTS message a decision names (once; not where
// reconcile's own entry says it stored the message).
func steps(entries []Entry) []Step {
	out := make([]Step, 0, len(entries)*2)
	storedBy := map[Ref]bool{}
	for _, e := range entries {
		if e.Decision == GapFound || e.Decision == DeleteFound {
			for _, ref := range e.Refs {
				storedBy[ref] = true
			}
		}
	}
	for _, e := range entries {
		st := Step{
			Time: e.Time, Stage: e.Stage, Source: e.Source, Decision: e.Decision, Reason: e.Reason, Hint: e.Hint,
			Action: e.Action, Version: e.Version, AppVersion: e.AppVersion, Refs: e.Refs,
		}
		if len(e.Refs) > 0 {
			st.Stream, st.Seq = e.Refs[0].Stream, e.Refs[0].Seq
		}
		out = append(out, st)
		if e.Stored.IsZero() {
			continue
		}
		for _, ref := range e.Refs {
			if (ref.Stream != events.StreamSN && ref.Stream != events.StreamApp) || storedBy[ref] {
				continue
			}
			storedBy[ref] = true
			out = append(out, Step{
				Time: e.Stored, Stage: StageIngest, Source: e.Source, Decision: Stored, Action: e.Action,
				Version: e.Version, AppVersion: e.AppVersion, Stream: ref.Stream, Seq: ref.Seq, Refs: []Ref{ref},
			})
			if ref.Stream == events.StreamApp {
				out[len(out)-1].Version = NoVersion // the app's change names no ServiceNow version
			}
		}
	}
	slices.SortStableFunc(out, func(a, b Step) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		// A message is stored before anything is decided about it.
		return cmp.Compare(storedFirst(a), storedFirst(b))
	})
	return out
}

func storedFirst(s Step) int {
	if s.Decision == Stored {
		return 0
	}
	return 1
}

// fetchConcurrency bounds the direct gets in flight for one timeline.
const fetchConcurrency = 16

// fetchMessages fills each step's Message with the body of the message it
// names, by sequence (one direct get per distinct message, some at once).
func (s *Store) fetchMessages(ctx context.Context, steps []Step) error {
	type got struct {
		m    *rawMsg
		gone bool
	}
	var mu sync.Mutex
	cache := map[Ref]got{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(fetchConcurrency)
	for _, st := range steps {
		ref := Ref{Stream: st.Stream, Seq: st.Seq}
		if ref.Stream == "" || ref.Seq == 0 {
			continue
		}
		mu.Lock()
		_, seen := cache[ref]
		if !seen {
			cache[ref] = got{}
		}
		mu.Unlock()
		if seen {
			continue
		}
		g.Go(func() error {
			m, err := s.getSeq(gctx, ref.Stream, ref.Seq)
			if err != nil {
				return err
			}
			mu.Lock()
			cache[ref] = got{m: m, gone: m == nil}
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i := range steps {
		c, ok := cache[Ref{Stream: steps[i].Stream, Seq: steps[i].Seq}]
		if !ok {
			continue
		}
		steps[i].MessageGone = c.gone
		if c.m != nil {
			steps[i].Message = asJSON(c.m.Data)
			steps[i].header = c.m.Header
		}
	}
	return nil
}

// asJSON is data when it is JSON, else data as a JSON string.
func asJSON(data []byte) json.RawMessage {
	if json.Valid(data) {
		return json.RawMessage(data)
	}
	b, _ := json.Marshal(string(data))
	return b
}

// rawMsg is a stored message read by a direct get.
type rawMsg struct {
	Subject string
	Seq     uint64
	Time    time.Time
	Header  nats.Header
	Data    []byte
}

// requestTimeout bounds one JetStream API request.
const requestTimeout = 5 * time.Second

// getSeq reads one message by sequence (a direct get); nil when the
// stream no longer holds it.
func (s *Store) getSeq(ctx context.Context, stream string, seq uint64) (*rawMsg, error) {
	return s.directGet(ctx, stream, `{"seq":`+strconv.FormatUint(seq, 10)+`}`)
}

// lastFor reads the last message of a subject; nil when there is none.
func (s *Store) lastFor(ctx context.Context, stream, subject string) (*rawMsg, error) {
	return s.directGet(ctx, stream, `{"last_by_subj":`+string(jsonw.AppendString(nil, subject))+`}`)
}

func (s *Store) directGet(ctx context.Context, stream, req string) (*rawMsg, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := s.nc.RequestWithContext(ctx, s.api+".DIRECT.GET."+stream, []byte(req))
	if errors.Is(err, nats.ErrNoResponders) {
		return nil, fmt.Errorf("read %s: the stream does not exist or allows no direct gets (start `bridge serve` once: it creates the streams)", stream)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", stream, err)
	}
	switch resp.Header.Get(statusHdr) {
	case "":
	case "404":
		return nil, nil
	default:
		return nil, fmt.Errorf("read %s: %s %s", stream, resp.Header.Get(statusHdr), resp.Header.Get(descrHdr))
	}
	return parseDirect(resp), nil
}

// readBatch is how many messages one batched direct get asks for.
const readBatch = 256

// readSubject reads a subject's messages in stream order with batched
// direct gets: the server walks its per-subject index, never the stream.
func (s *Store) readSubject(ctx context.Context, stream, subject string, limit int) ([]rawMsg, error) {
	inbox := s.nc.NewRespInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", stream, subject, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	var out []rawMsg
	from := uint64(0)
	for len(out) < limit {
		req := `{"seq":` + strconv.FormatUint(from, 10) + `,"next_by_subj":` + string(jsonw.AppendString(nil, subject)) +
			`,"batch":` + strconv.Itoa(min(readBatch, limit-len(out))) + `}`
		if err := s.nc.PublishRequest(s.api+".DIRECT.GET."+stream, inbox, []byte(req)); err != nil {
			return nil, fmt.Errorf("read %s %s: %w", stream, subject, err)
		}
		more, err := func() (bool, error) {
			rctx, cancel := context.WithTimeout(ctx, requestTimeout)
			defer cancel()
			for {
				m, err := sub.NextMsgWithContext(rctx)
				if err != nil {
					return false, fmt.Errorf("read %s %s: %w", stream, subject, err)
				}
				switch m.Header.Get(statusHdr) {
				case "":
				case "404":
					return false, nil // nothing (more) on the subject
				case "204": // end of this batch
					pending, _ := strconv.ParseUint(m.Header.Get("Nats-Num-Pending"), 10, 64)
					return pending > 0, nil
				case "503":
					return false, fmt.Errorf("read %s: the stream does not exist or allows no direct gets (start `bridge serve` once: it creates the streams)", stream)
				default:
					return false, fmt.Errorf("read %s %s: %s %s", stream, subject, m.Header.Get(statusHdr), m.Header.Get(descrHdr))
				}
				rm := parseDirect(m)
				out = append(out, *rm)
				from = rm.Seq + 1
			}
		}()
		if err != nil {
			return nil, err
		}
		if !more {
			break
		}
	}
	return out, nil
}

func parseDirect(m *nats.Msg) *rawMsg {
	rm := &rawMsg{Subject: m.Header.Get(jetstream.SubjectHeader), Header: m.Header, Data: m.Data}
	rm.Seq, _ = strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
	rm.Time, _ = time.Parse(time.RFC3339Nano, m.Header.Get(jetstream.TimeStampHeaer))
	return rm
}

// subjects lists a stream's subjects matching filter, from the stream's
// subject index (a stream info request with a subject filter).
func (s *Store) subjects(ctx context.Context, stream, filter string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := s.nc.RequestWithContext(ctx, s.api+".STREAM.INFO."+stream, []byte(`{"subjects_filter":`+string(jsonw.AppendString(nil, filter))+`}`))
	if err != nil {
		return nil, fmt.Errorf("look up %s in %s: %w", filter, stream, err)
	}
	var info struct {
		State struct {
			Subjects map[string]uint64 `json:"subjects"`
		} `json:"state"`
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &info); err != nil {
		return nil, fmt.Errorf("look up %s in %s: %w", filter, stream, err)
	}
	if info.Error != nil {
		if info.Error.Code == 404 {
			return nil, nil // a bucket or stream not created yet: nothing recorded there
		}
		return nil, fmt.Errorf("look up %s in %s: %s", filter, stream, info.Error.Description)
	}
	out := make([]string, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		out = append(out, subj)
	}
	slices.Sort(out)
	return out, nil
}

// Headers of a status answer (nats.go keeps its names unexported).
const (
	statusHdr = "Status"
	descrHdr  = "Description"
)
