package main

import "github.com/spf13/cobra"

func newDLQCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "dlq",
		Short: "dlq (not yet built)",
		RunE:  func(*cobra.Command, []string) error { return errNotBuilt },
	}
}
