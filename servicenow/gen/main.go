// Command gen writes servicenow/update_set/nowbridge.xml from the scripts in
// servicenow/business_rules, so the update set never drifts from the sources.
// Run it with `go generate ./servicenow` (or `go run ./servicenow/gen` from
// the repository root); -tables adds rules for more tables.
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
	tables := flag.String("tables", "incident", "comma-separated tables that get business rules")
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
	return nil
}
