package main

import "github.com/spf13/cobra"

func newReplayCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "replay",
		Short: "replay (not yet built)",
		RunE:  func(*cobra.Command, []string) error { return errNotBuilt },
	}
}
