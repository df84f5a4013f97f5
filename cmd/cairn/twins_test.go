package main

import (
	"io"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cairnbuild/cairn/cmd/internal/envtwin"
)

// commandFlags returns every command of the tree by path ("cairn serve"),
// with its flags by name.
func commandFlags(t *testing.T) map[string]map[string]*pflag.Flag {
	t.Helper()
	root := newRootCmd(&app{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }})
	all := make(map[string]map[string]*pflag.Flag)
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		flags := make(map[string]*pflag.Flag)
		c.Flags().VisitAll(func(fl *pflag.Flag) { flags[fl.Name] = fl })
		c.PersistentFlags().VisitAll(func(fl *pflag.Flag) { flags[fl.Name] = fl })
		all[c.CommandPath()] = flags
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	return all
}

// TestEveryFlagHasATwin: every flag of every command names its twin in
// its help, and by the one rule.
func TestEveryFlagHasATwin(t *testing.T) {
	n := 0
	for cmd, flags := range commandFlags(t) {
		for name, fl := range flags {
			n++
			if want := " [$" + envtwin.Name(name) + "]"; !strings.HasSuffix(fl.Usage, want) || strings.Count(fl.Usage, "[$") != 1 {
				t.Errorf("%s --%s: usage %q does not end in %q alone", cmd, name, fl.Usage, want)
			}
		}
	}
	if n < 50 {
		t.Errorf("only %d flags in the tree: the walk missed commands", n)
	}
}

// TestTwinNamesInUse: the variables the README, scripts and tests use name
// flags of the commands they are used with, so they keep working.
func TestTwinNamesInUse(t *testing.T) {
	storage := []string{"CAIRN_DATA", "CAIRN_S3_ENDPOINT", "CAIRN_S3_BUCKET", "CAIRN_S3_REGION", "CAIRN_S3_PREFIX",
		"CAIRN_S3_ACCESS_KEY", "CAIRN_S3_SECRET_KEY", "CAIRN_S3_SESSION_TOKEN", "CAIRN_S3_INSECURE", "CAIRN_CONCURRENCY", "CAIRN_LOG_LEVEL"}
	client := []string{"CAIRN_SERVER", "CAIRN_TIMEOUT"}
	want := map[string][]string{
		"cairn serve": append([]string{"CAIRN_LISTEN", "CAIRN_METRICS_LISTEN", "CAIRN_GRACE_PERIOD", "CAIRN_MAX_RECV_MSG_SIZE",
			"CAIRN_RPC_TIMEOUT", "CAIRN_STREAM_IDLE_TIMEOUT", "CAIRN_MAX_TRANSFERS", "CAIRN_MAX_SIZE"}, storage...),
		"cairn reindex": storage,
		"cairn push":    append([]string{"CAIRN_NO_PROGRESS", "CAIRN_PLATFORM"}, client...),
		"cairn pull":    append([]string{"CAIRN_NO_PROGRESS", "CAIRN_CHUNK_CACHE"}, client...),
		"cairn lookup":  append([]string{"CAIRN_PLATFORM"}, client...),
		"cairn record":  append([]string{"CAIRN_PLATFORM"}, client...),
		"cairn stat":    client,
		"cairn ls":      client,
		"cairn rm":      client,
	}
	all := commandFlags(t)
	for cmd, names := range want {
		twins := make(map[string]bool)
		for name := range all[cmd] {
			twins[envtwin.Name(name)] = true
		}
		for _, name := range names {
			if !twins[name] {
				t.Errorf("%s: no flag has the twin %s", cmd, name)
			}
		}
	}
}
