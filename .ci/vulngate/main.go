// Command vulngate reads govulncheck's JSON stream on stdin and fails when a
// vulnerability is called by nowbridge's code and not listed, with its
// reason, in the allow file (SECURITY.md holds the analysis). Vulnerabilities
// in imported packages or required modules that the code does not call are
// reported but do not fail.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

type message struct {
	Config *struct {
		ScannerVersion string `json:"scanner_version"`
		DB             string `json:"db"`
		GoVersion      string `json:"go_version"`
	} `json:"config"`
	OSV *struct {
		ID      string `json:"id"`
		Summary string `json:"summary"`
	} `json:"osv"`
	Finding *struct {
		OSV   string `json:"osv"`
		Trace []struct {
			Module   string `json:"module"`
			Package  string `json:"package"`
			Function string `json:"function"`
		} `json:"trace"`
	} `json:"finding"`
}

func main() {
	allowPath := flag.String("allow", ".ci/vuln-allow.txt", "file of analysed OSV ids, one per line with its reason")
	flag.Parse()
	allowed, err := readAllow(*allowPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vulngate:", err)
		os.Exit(2)
	}
	called, imported, summaries, goVersion, err := scan(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vulngate:", err)
		os.Exit(2)
	}
	fmt.Printf("govulncheck with %s: %d vulnerabilities called, %d only imported or required\n", goVersion, len(called), len(imported))
	var failed []string
	for _, id := range called {
		if reason, ok := allowed[id]; ok {
			fmt.Printf("  called, analysed: %s %s (%s)\n", id, summaries[id], reason)
			continue
		}
		failed = append(failed, id)
		fmt.Printf("  CALLED: %s %s\n", id, summaries[id])
	}
	for id := range allowed {
		if !slices.Contains(called, id) {
			fmt.Printf("  note: %s is in %s but no longer called; remove it\n", id, *allowPath)
		}
	}
	if len(failed) > 0 {
		fmt.Fprintf(os.Stderr, "vulngate: %d called vulnerabilities not analysed: %s (upgrade the module or toolchain, or analyse it in SECURITY.md and %s)\n",
			len(failed), strings.Join(failed, ", "), *allowPath)
		os.Exit(1)
	}
}

func readAllow(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		id, reason, _ := strings.Cut(line, " ")
		if strings.TrimSpace(reason) == "" {
			return nil, fmt.Errorf("%s: %s has no reason", path, id)
		}
		out[id] = strings.TrimSpace(reason)
	}
	return out, sc.Err()
}

// scan reads the JSON stream: a finding whose trace reaches a function is
// called; one that stops at a package or module is not.
func scan(r io.Reader) (called, imported []string, summaries map[string]string, goVersion string, err error) {
	summaries = map[string]string{}
	isCalled := map[string]bool{}
	dec := json.NewDecoder(r)
	sawConfig := false
	for {
		var m message
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, nil, nil, "", fmt.Errorf("reading govulncheck's JSON: %w", err)
		}
		switch {
		case m.Config != nil:
			sawConfig, goVersion = true, m.Config.GoVersion
		case m.OSV != nil:
			summaries[m.OSV.ID] = m.OSV.Summary
		case m.Finding != nil:
			id := m.Finding.OSV
			if _, seen := isCalled[id]; !seen {
				isCalled[id] = false
			}
			if len(m.Finding.Trace) > 0 && m.Finding.Trace[0].Function != "" {
				isCalled[id] = true
			}
		}
	}
	if !sawConfig {
		return nil, nil, nil, "", errors.New("no govulncheck output on stdin (did it fail to run?)")
	}
	for id, c := range isCalled {
		if c {
			called = append(called, id)
		} else {
			imported = append(imported, id)
		}
	}
	slices.Sort(called)
	slices.Sort(imported)
	return called, imported, summaries, goVersion, nil
}
