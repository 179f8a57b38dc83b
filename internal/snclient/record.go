package snclient

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
)

// Value is one field as ServiceNow rendered it. With the default
// sysparm_display_value=false, Value is the raw value and Link is set on
// references (unless sysparm_exclude_reference_link=true). With all, Display
// holds the display value too. With true, ServiceNow sends only display
// values: they are in Value, as sent.
type Value struct {
	Value   string
	Display string
	Link    string
}

// Record is one row as ServiceNow sent it.
type Record map[string]Value

// UnmarshalJSON accepts every shape the Table API uses for a field: a
// string; a number or boolean (never sent by ServiceNow, accepted anyway);
// null; {"link","value"} for references; {"display_value","value"[,"link"]}
// for sysparm_display_value=all.
func (r *Record) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	if raw == nil {
		return errors.New("record: null")
	}
	out := make(Record, len(raw))
	for k, v := range raw {
		val, err := decodeValue(v)
		if err != nil {
			return fmt.Errorf("field %q: %w", k, err)
		}
		out[k] = val
	}
	*r = out
	return nil
}

func decodeValue(v json.RawMessage) (Value, error) {
	v = bytes.TrimSpace(v)
	if len(v) > 0 && v[0] == '{' {
		var obj struct {
			Value   json.RawMessage `json:"value"`
			Display json.RawMessage `json:"display_value"`
			Link    json.RawMessage `json:"link"`
		}
		if err := json.Unmarshal(v, &obj); err != nil {
			return Value{}, err
		}
		if obj.Value == nil {
			return Value{}, errors.New("object without a \"value\" member")
		}
		var out Value
		var err error
		if out.Value, err = events.FieldString(obj.Value); err != nil {
			return Value{}, err
		}
		if obj.Display != nil {
			if out.Display, err = events.FieldString(obj.Display); err != nil {
				return Value{}, fmt.Errorf("display_value: %w", err)
			}
		}
		if obj.Link != nil {
			if out.Link, err = events.FieldString(obj.Link); err != nil {
				return Value{}, fmt.Errorf("link: %w", err)
			}
		}
		return out, nil
	}
	s, err := events.FieldString(v)
	return Value{Value: s}, err
}

// MarshalJSON writes the record back in ServiceNow's shapes.
func (r Record) MarshalJSON() ([]byte, error) {
	m := make(map[string]any, len(r))
	for k, v := range r {
		switch {
		case v.Display != "":
			o := map[string]string{"value": v.Value, "display_value": v.Display}
			if v.Link != "" {
				o["link"] = v.Link
			}
			m[k] = o
		case v.Link != "":
			m[k] = map[string]string{"value": v.Value, "link": v.Link}
		default:
			m[k] = v.Value
		}
	}
	return json.Marshal(m)
}

// Get returns a field's value ("" when absent).
func (r Record) Get(field string) string { return r[field].Value }

// Display returns a field's display value, or its value when ServiceNow
// sent no separate display value.
func (r Record) Display(field string) string {
	if v := r[field]; v.Display != "" {
		return v.Display
	}
	return r[field].Value
}

// Has reports whether ServiceNow sent the field at all (ACLs omit fields).
func (r Record) Has(field string) bool { _, ok := r[field]; return ok }

// Fields flattens the record to raw string values.
func (r Record) Fields() events.Fields {
	f := make(events.Fields, len(r))
	for k, v := range r {
		f[k] = v.Value
	}
	return f
}

// SysID is the record's sys_id.
func (r Record) SysID() string { return r.Get("sys_id") }

// UpdatedOn parses sys_updated_on (UTC).
func (r Record) UpdatedOn() (time.Time, error) {
	return time.Parse(TimeLayout, r.Get("sys_updated_on"))
}

// ModCount parses sys_mod_count.
func (r Record) ModCount() (int64, error) {
	return strconv.ParseInt(r.Get("sys_mod_count"), 10, 64)
}
