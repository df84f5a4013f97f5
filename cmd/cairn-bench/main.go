// Command cairn-bench measures cairn and what it stores, apart from the
// cairn binary that production runs: layer reuse of a set of layers and
// images (reuse.go), load against a running server (load.go), the raw-S3
// baseline that push and pull are compared with (s3.go), and seeded data
// for big-layer runs (gen.go). bench/run.sh drives them all. Flags have
// environment twins, as cairn's do (package envtwin), under the same names:
// CAIRN_SERVER, CAIRN_S3_ENDPOINT, ...
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/cmd/internal/envtwin"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
)

// app holds what every subcommand reads and writes, so tests can run the
// whole CLI in-process with their own streams and environment.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
}

// newRootCmd builds the command tree, one constructor per file, and gives
// every flag its environment twin.
func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:           "cairn-bench",
		Short:         "Measure layer reuse, server load and the raw S3 baseline of cairn",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(a.stdin)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.AddCommand(newReuseCmd(a), newLoadCmd(a), newS3Cmd(a), newGenCmd(a))
	envtwin.Install(root, a.getenv)
	return root
}

// run executes the CLI and returns the process exit code.
func run(ctx context.Context, a *app, args []string) int {
	root := newRootCmd(a)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(a.stderr, "cairn-bench: %v\n", err)
		return exitFailure
	}
	return exitOK
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, &app{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}, os.Args[1:])
	stop()
	os.Exit(code)
}
