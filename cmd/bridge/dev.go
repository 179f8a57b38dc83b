package main

import "github.com/spf13/cobra"

func newDevCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "dev",
		Short: "dev (not yet built)",
		RunE:  func(*cobra.Command, []string) error { return errNotBuilt },
	}
}
