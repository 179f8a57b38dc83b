package snclient

import (
	"context"
	"fmt"
	"strconv"
)

// Choice is one active value of a choice field (a sys_choice row).
type Choice struct {
	Value    string
	Label    string
	Sequence int
}

// choiceTable holds the choice lists of every choice field; the integration
// user's itil role can read it.
const choiceTable = "sys_choice"

// Choices returns the active choices of table.element in sys_choice order
// (sequence, then value), one per value whatever the languages. A choice
// list may be defined on a parent table (task fields): pass the table the
// field belongs to. No rows at all is an empty list; rows that
// X-Total-Count counts but the user cannot see are an *ACLWarning error,
// never an empty list.
func (c *Client) Choices(ctx context.Context, table, element string) ([]Choice, error) {
	if err := checkTable(table); err != nil {
		return nil, err
	}
	if !fieldNameRE.MatchString(element) {
		return nil, fmt.Errorf("%w: %q is not a field name", ErrInvalidQuery, element)
	}
	q := And(Field("name").EQ(table), Field("element").EQ(element), Field("inactive").EQ("false")).
		OrderBy("sequence").OrderBy("value")
	opts := ListOptions{Query: q, Fields: []string{"value", "label", "sequence"}, Limit: 1000}
	var out []Choice
	seen := map[string]bool{}
	counted, returned := 0, 0
	for {
		// sys_choice's own fields are fixed and documented: no field
		// learning for it.
		page, err := c.list(ctx, choiceTable, opts, false)
		if err != nil {
			return nil, fmt.Errorf("read the %s choices of %s: %w", element, table, err)
		}
		counted = max(counted, page.Total)
		returned += len(page.Records)
		for _, r := range page.Records {
			v := r.Get("value")
			if v == "" || seen[v] {
				continue
			}
			seen[v] = true
			seq, _ := strconv.Atoi(r.Get("sequence"))
			out = append(out, Choice{Value: v, Label: r.Get("label"), Sequence: seq})
		}
		if !page.HasNext {
			break
		}
		opts.Offset = page.NextOffset
	}
	if returned == 0 && counted > 0 {
		return nil, &ACLWarning{Table: choiceTable, Kind: ACLRows, Total: counted, Returned: 0,
			Hint: "the OAuth application user cannot read sys_choice: grant itil (it reads sys_choice), or set the close code explicitly (BRIDGE_CLOSE_CODE)"}
	}
	return out, nil
}
