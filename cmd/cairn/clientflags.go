package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/cairnbuild/cairn/client"
)

// defaultServer is where the client commands look for `cairn serve` when
// neither --server nor CAIRN_SERVER says otherwise; it is serve's default
// listen address.
const defaultServer = "127.0.0.1:7070"

// clientFlags are the flags every client subcommand takes. Each has an
// environment twin that sets its default; the flag wins over the variable.
type clientFlags struct {
	a          *app
	cmd        *cobra.Command
	server     string
	timeout    time.Duration
	json       bool
	noProgress bool
	envErr     error // a twin that did not parse, reported when the command runs
}

// addClientFlags registers --server, --timeout, --json and (when progress
// is true) --no-progress on cmd.
func addClientFlags(a *app, cmd *cobra.Command, progress bool) *clientFlags {
	f := &clientFlags{a: a, cmd: cmd}
	fs := cmd.Flags()
	server := a.getenv("CAIRN_SERVER")
	if server == "" {
		server = defaultServer
	}
	fs.StringVar(&f.server, "server", server, "address (host:port) of the cairn server [$CAIRN_SERVER]")
	var timeout time.Duration
	if v := a.getenv("CAIRN_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			f.envErr = fmt.Errorf("CAIRN_TIMEOUT=%q: want a duration like 30s or 5m", v)
		}
		timeout = d
	}
	fs.DurationVar(&f.timeout, "timeout", timeout, "give up after this long, e.g. 30s (0: no limit) [$CAIRN_TIMEOUT]")
	fs.BoolVar(&f.json, "json", false, "print the result as JSON on stdout, for scripts")
	if progress {
		noProgress, _ := strconv.ParseBool(a.getenv("CAIRN_NO_PROGRESS"))
		fs.BoolVar(&f.noProgress, "no-progress", noProgress, "no progress bar, even on a terminal [$CAIRN_NO_PROGRESS]")
	}
	return f
}

// connect applies --timeout to ctx and dials --server. The caller calls
// the returned cleanup when done.
func (f *clientFlags) connect(ctx context.Context) (context.Context, *client.Client, func(), error) {
	if f.envErr != nil && !f.cmd.Flags().Changed("timeout") {
		return nil, nil, nil, f.envErr
	}
	cancel := func() {}
	if f.timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, f.timeout)
	}
	c, err := client.Dial(ctx, f.server)
	if err != nil {
		cancel()
		return nil, nil, nil, fmt.Errorf("connect to %s: %w", f.server, err)
	}
	return ctx, c, func() { c.Close(); cancel() }, nil
}

// fail turns an error from the client into one a person can act on, with
// the exit code scripts branch on.
func (f *clientFlags) fail(err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, client.ErrMiss):
		return &exitError{code: exitMiss, err: err}
	case errors.Is(err, client.ErrNotFound):
		return &exitError{code: exitNotFound, err: err}
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w (timed out after %s; raise --timeout or CAIRN_TIMEOUT)", err, f.timeout)
	case errors.Is(err, client.ErrUnavailable):
		return fmt.Errorf("%w\n(is `cairn serve` running at %s? point --server or CAIRN_SERVER at it)", err, f.server)
	}
	return err
}

// layerFail is fail for an operation on layer d: a missing layer gets a
// plain message naming the layer and the server.
func (f *clientFlags) layerFail(d digest.Digest, err error) error {
	if errors.Is(err, client.ErrNotFound) {
		return &exitError{code: exitNotFound, err: fmt.Errorf("layer %s not found on %s", d, f.server)}
	}
	return f.fail(err)
}

// plural returns "1 chunk", "2 chunks".
func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// printJSON writes v as indented JSON on stdout.
func (f *clientFlags) printJSON(v any) error {
	enc := json.NewEncoder(f.a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// progress returns a progress callback for total bytes (total < 0:
// unknown) and a function that finishes the bar. Without a terminal on
// stderr, or with --no-progress, both do nothing.
func (f *clientFlags) progress(total int64, desc string) (func(done int64), func()) {
	file, ok := f.a.stderr.(*os.File)
	if f.noProgress || !ok || !term.IsTerminal(int(file.Fd())) {
		return nil, func() {}
	}
	bar := progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(file),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowTotalBytes(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionShowCount(),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSpinnerType(14),
	)
	return func(done int64) { _ = bar.Set64(done) }, func() { _ = bar.Finish() }
}

// note prints a line for people on stderr.
func (f *clientFlags) note(format string, args ...any) {
	fmt.Fprintf(f.a.stderr, format+"\n", args...)
}

// parseDigest validates a digest given on the command line; what names it
// (a flag, an argument) goes into the message.
func parseDigest(what, s string) (digest.Digest, error) {
	d, err := digest.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%s %q is not a digest (want sha256:<64 hex digits>): %v", what, s, err)
	}
	return d, nil
}

// parseOptionalDigest is parseDigest with "" allowed (meaning none).
func parseOptionalDigest(what, s string) (digest.Digest, error) {
	if s == "" {
		return "", nil
	}
	return parseDigest(what, s)
}

// humanBytes formats n in IEC units for people.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// closeQuietly closes c, for readers whose close error cannot matter.
func closeQuietly(c io.Closer) { _ = c.Close() }
