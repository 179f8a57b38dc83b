package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

func newVersionCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print version and build info",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			commit, when, dirty := "unknown", "", false
			if bi, ok := debug.ReadBuildInfo(); ok {
				for _, s := range bi.Settings {
					switch s.Key {
					case "vcs.revision":
						commit = s.Value
					case "vcs.time":
						when = s.Value
					case "vcs.modified":
						dirty = s.Value == "true"
					}
				}
			}
			if dirty {
				commit += "+dirty"
			}
			fmt.Fprintf(a.stdout, "bridge %s (commit %s%s, %s, %s/%s)\n", version, commit, when, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}
