package main

import "github.com/spf13/cobra"

func newDoctorCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "doctor (not yet built)",
		RunE:  func(*cobra.Command, []string) error { return errNotBuilt },
	}
}
