package snclient

import (
	"context"
	"net/http"
	"testing"
	"time"
)

// FuzzServiceNowRows: whatever a list answer of sys_choice, sys_dictionary
// or a table holds (any JSON, any X-Total-Count), reading close-code choices,
// the dictionary and a table's fields returns values or an error; never a
// panic, never an empty or repeated choice.
func FuzzServiceNowRows(f *testing.F) {
	f.Add(`{"result":[{"value":"Solution provided","label":"Solution provided","sequence":"1"},{"value":"Duplicate","label":"Duplicate","sequence":"2"}]}`, "2")
	f.Add(`{"result":[{"value":"","label":"x"},{"value":"a"},{"value":"a","sequence":"x"}]}`, "3")
	f.Add(`{"result":[]}`, "103")
	f.Add(`{"result":[{"element":"short_description"},{"element":null},{"element":{"value":"state"}}]}`, "")
	f.Add(`{"result":{"value":"not a list"}}`, "1")
	f.Add(`{"result":[{"sys_id":"9d385017c611228701d22104cc95c371","number":"INC0010001","caller_id":{"link":"x","value":"y"}}]}`, "-4")
	f.Add(`not json`, "1")
	fake := newFakeSN(f)
	f.Fuzz(func(t *testing.T, body, total string) {
		fake.set(func(s *fakeSN) {
			s.intercept = func(w http.ResponseWriter, _ *http.Request) bool {
				if total != "" {
					w.Header().Set("X-Total-Count", total)
				}
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(body))
				return true
			}
		})
		cfg := fake.config()
		cfg.SkipFieldValidation = false
		cfg.RetryMaxElapsed = 10 * time.Millisecond
		cfg.BreakerFailures = 1 << 30
		c, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		choices, err := c.Choices(ctx, "incident", "close_code")
		if err == nil {
			seen := map[string]bool{}
			for _, ch := range choices {
				if ch.Value == "" || seen[ch.Value] {
					t.Fatalf("choices %+v from %q: an empty or repeated value", choices, body)
				}
				seen[ch.Value] = true
			}
		}
		_, _ = c.DictionaryFields(ctx, "incident")
		if fi, err := c.FieldInfo(ctx, "incident"); err == nil && len(fi.Names) == 0 {
			t.Fatalf("field info of %q lists no field at all (the system fields are always known)", body)
		}
	})
}
