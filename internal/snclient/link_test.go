package snclient

import (
	"slices"
	"testing"
)

func TestParseLinks(t *testing.T) {
	const base = "https://dev1.service-now.com/api/now/table/incident?sysparm_limit=2"
	tests := []struct {
		name     string
		header   []string
		want     []Link
		nextOff  int
		nextOK   bool
		prevSafe bool // prev must not be followed
	}{
		{
			name:   "servicenow: comma without space, negative prev on page 1",
			header: []string{`<` + base + `&sysparm_offset=0>;rel="first",<` + base + `&sysparm_offset=-2>;rel="prev",<` + base + `&sysparm_offset=2>;rel="next",<` + base + `&sysparm_offset=8>;rel="last"`},
			want: []Link{
				{base + "&sysparm_offset=0", "first"}, {base + "&sysparm_offset=-2", "prev"},
				{base + "&sysparm_offset=2", "next"}, {base + "&sysparm_offset=8", "last"},
			},
			nextOff: 2, nextOK: true,
		},
		{
			name:    "comma with space, unquoted rel",
			header:  []string{`<` + base + `&sysparm_offset=4>; rel=next, <` + base + `&sysparm_offset=0>; rel=first`},
			want:    []Link{{base + "&sysparm_offset=4", "next"}, {base + "&sysparm_offset=0", "first"}},
			nextOff: 4, nextOK: true,
		},
		{
			name:   "last page: no next",
			header: []string{`<` + base + `&sysparm_offset=0>;rel="first",<` + base + `&sysparm_offset=6>;rel="prev",<` + base + `&sysparm_offset=8>;rel="last"`},
			want: []Link{
				{base + "&sysparm_offset=0", "first"}, {base + "&sysparm_offset=6", "prev"}, {base + "&sysparm_offset=8", "last"},
			},
		},
		{
			name:    "two header lines",
			header:  []string{`<` + base + `&sysparm_offset=0>;rel="first"`, `<` + base + `&sysparm_offset=2>;rel="next"`},
			want:    []Link{{base + "&sysparm_offset=0", "first"}, {base + "&sysparm_offset=2", "next"}},
			nextOff: 2, nextOK: true,
		},
		{
			name:    "comma inside the URL",
			header:  []string{`<https://x/api/now/table/incident?sysparm_fields=a,b&sysparm_offset=10>;rel="next"`},
			want:    []Link{{"https://x/api/now/table/incident?sysparm_fields=a,b&sysparm_offset=10", "next"}},
			nextOff: 10, nextOK: true,
		},
		{
			name:   "negative next is not followed",
			header: []string{`<` + base + `&sysparm_offset=-5>;rel="next"`},
			want:   []Link{{base + "&sysparm_offset=-5", "next"}},
		},
		{name: "garbage", header: []string{`not a link, <unterminated`}},
		{name: "no rel", header: []string{`<https://x/?sysparm_offset=1>; title="x"`}},
		{name: "empty", header: []string{""}},
		{
			name:    "several rels, extra params, uppercase",
			header:  []string{`<https://x/?sysparm_offset=3>; title="t"; REL="Next Last"`},
			want:    []Link{{"https://x/?sysparm_offset=3", "next"}, {"https://x/?sysparm_offset=3", "last"}},
			nextOff: 3, nextOK: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ParseLinks(tt.header...)
			if !slices.Equal(got, tt.want) {
				t.Errorf("ParseLinks()\n got %#v\nwant %#v", got, tt.want)
			}
			off, ok := 0, false
			if l, found := findLink(got, "next"); found {
				off, ok = l.Offset()
			}
			if off != tt.nextOff || ok != tt.nextOK {
				t.Errorf("next offset = %d,%v; want %d,%v", off, ok, tt.nextOff, tt.nextOK)
			}
			if l, found := findLink(got, "prev"); found {
				if off, ok := l.Offset(); ok && off < 0 {
					t.Errorf("prev offset %d reported usable", off)
				}
			}
		})
	}
}

func FuzzParseLinks(f *testing.F) {
	f.Add(`<https://i/api/now/table/incident?sysparm_limit=1&sysparm_offset=0>;rel="first",<https://i/api/now/table/incident?sysparm_limit=1&sysparm_offset=-1>;rel="prev",<https://i/api/now/table/incident?sysparm_limit=1&sysparm_offset=1>;rel="next",<https://i/api/now/table/incident?sysparm_limit=1&sysparm_offset=4>;rel="last"`)
	f.Add(`<a>; rel=next, <b>; rel="prev"`)
	f.Add(`<`)
	f.Add(`>;rel=<`)
	f.Add(`<%zz>;rel=next`)
	f.Add(`<?sysparm_offset=99999999999999999999>;rel=next`)
	f.Fuzz(func(t *testing.T, h string) {
		for _, l := range ParseLinks(h) {
			if l.Rel == "" {
				t.Errorf("link with empty rel from %q", h)
			}
			if off, ok := l.Offset(); ok && off < 0 {
				t.Errorf("negative offset %d reported usable from %q", off, h)
			}
		}
	})
}
