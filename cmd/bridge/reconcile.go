package main

import "github.com/spf13/cobra"

func newReconcileCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "reconcile",
		Short: "reconcile (not yet built)",
		RunE:  func(*cobra.Command, []string) error { return errNotBuilt },
	}
}
