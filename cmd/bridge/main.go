// Command bridge is the nowbridge binary: the ServiceNow sync bridge, its
// ServiceNow simulator and its operator tools. This package only wires parts.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// app carries the process environment to every command, so tests can run the
// whole binary in-process.
type app struct {
	getenv func(string) string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// usageError marks wrong usage (exit status 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// run is the real main: it returns the exit status (0 ok, 1 failure, 2 usage).
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "bridge",
		Short:         "nowbridge: a webhook-driven ServiceNow <-> SaaS sync bridge on NATS JetStream",
		SilenceUsage:  true,
		SilenceErrors: true,
		// Runnable, so that its argument check (markUsageErrors) rejects an
		// unknown command as wrong usage; without arguments it prints help.
		RunE: func(c *cobra.Command, _ []string) error { return c.Help() },
	}
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		newServeCmd(a),
		newDevCmd(a),
		newSimCmd(a),
		newReconcileCmd(a),
		newReplayCmd(a),
		newDLQCmd(a),
		newTraceCmd(a),
		newStatusCmd(a),
		newDoctorCmd(a),
		newVersionCmd(a),
		newHealthcheckCmd(a),
		newBenchCmd(a),
	)
	markUsageErrors(root)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	// One line (SPEC §5), even for a configuration with several problems
	// (errors.Join puts each on its own line): "; " between them.
	fmt.Fprintln(stderr, "bridge: "+strings.ReplaceAll(err.Error(), "\n", "; "))
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// markUsageErrors wraps every command's argument check so that its errors
// (unknown command, wrong number of arguments) are usage errors (exit 2),
// recognised by type rather than by cobra's message text.
func markUsageErrors(cmd *cobra.Command) {
	check := cmd.Args
	if check == nil {
		if cmd.HasSubCommands() {
			check = cobra.NoArgs // an unknown subcommand ends up here
		} else {
			check = cobra.ArbitraryArgs
		}
	}
	cmd.Args = func(c *cobra.Command, args []string) error {
		if err := check(c, args); err != nil {
			return usageError{err}
		}
		return nil
	}
	for _, sub := range cmd.Commands() {
		markUsageErrors(sub)
	}
}
