// Command gen writes servicenow/update_set/nowbridge.xml from the scripts in
// servicenow/business_rules, so the update set never drifts from the sources.
// Run it with `go generate ./servicenow` (or `go run ./servicenow/gen` from
// the repository root); -tables builds one for other tables (default: every
// shipped table). Tables of a scoped application (HR cases) get their
// nowbridge.fields property here; their rules are created by hand in their
// scope, and gen says so.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nowbridge/nowbridge/servicenow"
)

func main() {
	out := flag.String("o", "", "output file (default update_set/nowbridge.xml under the servicenow directory)")
	tables := flag.String("tables", strings.Join(servicenow.ShippedTables(), ","), "comma-separated tables that get business rules (global scope) and a nowbridge.fields property")
	flag.Parse()
	if err := run(*out, *tables); err != nil {
		fmt.Fprintln(os.Stderr, "gen: "+err.Error())
		os.Exit(1)
	}
}

func run(out, tables string) error {
	if out == "" {
		out = filepath.Join("servicenow", "update_set", "nowbridge.xml")
		if _, err := os.Stat("update_set"); err == nil { // run by go generate in servicenow/
			out = filepath.Join("update_set", "nowbridge.xml")
		}
	}
	var list []string
	for _, t := range strings.Split(tables, ",") {
		if t = strings.TrimSpace(t); t != "" {
			list = append(list, t)
		}
	}
	xml, err := servicenow.BuildUpdateSet(servicenow.Options{Tables: list})
	if err != nil {
		return err
	}
	if err := os.WriteFile(out, xml, 0o644); err != nil {
		return err
	}
	fmt.Printf("wrote %s (%d bytes, tables %s)\n", out, len(xml), strings.Join(list, ","))
	for _, t := range list {
		if scope := servicenow.TableScope(t); scope != "global" {
			fmt.Printf("note: %s belongs to the %s scope: create its two business rules by hand in that scope (docs/servicenow-setup.md, \"HR cases\"); the update set holds its nowbridge.fields property\n", t, scope)
		}
	}
	return nil
}
