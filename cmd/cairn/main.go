// Command cairn is the build cache: `cairn serve` runs the server and the
// other subcommands talk to one. Each subcommand lives in a file of its own;
// this file only wires them, gives every flag its environment twin
// (package envtwin) and maps errors to exit codes. The benchmarks are a
// command of their own, cairn-bench.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/cmd/internal/envtwin"
)

// Exit codes that scripts can branch on.
const (
	exitOK       = 0
	exitFailure  = 1 // anything else: bad flags, server down, I/O error
	exitMiss     = 2 // a lookup found no cached step
	exitNotFound = 3 // the named layer or object does not exist
)

// exitError carries an exit code other than exitFailure through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// app holds what every subcommand reads and writes, so tests can run the
// whole CLI in-process with their own streams and environment.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
}

// newRootCmd builds the command tree. Subcommands are added here, one
// constructor per file; then errors in how a command is called get its
// usage line (withUsage), and every flag gets its environment twin.
func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:           "cairn",
		Short:         "cairn is a shared build cache and layer-deduplication server for container builds",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(a.stdin)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.AddCommand(
		newVersionCmd(a),
		newServeCmd(a),
		newReindexCmd(a),
		newMaterializeCmd(a),
		newPushCmd(a),
		newPullCmd(a),
		newLookupCmd(a),
		newRecordCmd(a),
		newStatCmd(a),
		newLsCmd(a),
		newRmCmd(a),
		newStepsCmd(a),
		newVerifyCmd(a),
		newGCCmd(a),
		newTokenCmd(a),
	)
	withUsage(root)
	envtwin.Install(root, a.getenv)
	return root
}

// run executes the CLI and returns the process exit code.
func run(ctx context.Context, a *app, args []string) int {
	root := newRootCmd(a)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(a.stderr, "cairn: %v\n", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitFailure
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, &app{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}, os.Args[1:])
	stop()
	os.Exit(code)
}
