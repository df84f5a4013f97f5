package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/cairnbuild/cairn/client"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// The tests in this file hold the rough edges a newcomer met (issue #14)
// fixed: each fails without its fix.

// TestPullOutputCheckedFirst: pull -o a directory, or a file in a
// directory that does not exist, fails before anything is downloaded (the
// server is not even reachable here), naming the path given, not the
// hidden temp file.
func TestPullOutputCheckedFirst(t *testing.T) {
	env := map[string]string{"CAIRN_SERVER": "127.0.0.1:1"}
	d := digest.FromString("layer").String()
	dir := t.TempDir()
	for _, tc := range []struct {
		name, out, want string
	}{
		{"a directory", dir, "-o " + dir + " is a directory"},
		{"no such directory", filepath.Join(dir, "nope", "layer.tar"), "directory " + filepath.Join(dir, "nope") + " does not exist"},
		{"a file as the directory", filepath.Join(dir, "file", "layer.tar"), filepath.Join(dir, "file") + " is not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(dir, "file"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			r := runClientCLI(t, env, nil, "pull", d, "-o", tc.out)
			if r.code != exitFailure || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want 1 and %q", r.code, r.stderr, tc.want)
			}
			if strings.Contains(r.stderr, ".cairn-") || strings.Contains(r.stderr, "127.0.0.1:1") {
				t.Errorf("stderr %q names the temp file or the server: -o was not checked first", r.stderr)
			}
		})
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Errorf("left in %s: %v, %v; want only the file the test made", dir, entries, err)
	}
}

// TestSizeFlags: every size flag of serve takes the usual spellings, and
// a size out of range or unreadable gets a message with the exact bound or
// an example that works.
func TestSizeFlags(t *testing.T) {
	serve := func(args ...string) cliRun {
		t.Helper()
		// --max-transfers 0 is checked after every size: an error about it
		// means the sizes were taken, and nothing is served.
		return runClientCLI(t, nil, nil, append([]string{"serve", "--data", t.TempDir(), "--max-transfers", "0"}, args...)...)
	}
	for _, flag := range []string{"--max-recv-msg-size", "--max-manifest-size", "--max-expanded-size", "--rebuilt-cache-size"} {
		for _, size := range []string{"8MiB", "8 MiB", "8mib", "8Mi", "8MB", "8M", "8m", "8388608"} {
			if r := serve(flag, size); !strings.Contains(r.stderr, "--max-transfers 0") {
				t.Errorf("%s %q: %s", flag, size, r.stderr)
			}
		}
		r := serve(flag, "8 mebibytes")
		if !strings.Contains(r.stderr, flag+` "8 mebibytes" is not a size: write e.g. `) {
			t.Errorf("%s 8 mebibytes: %q; want an example of a size", flag, r.stderr)
		}
		example := regexp.MustCompile(`e\.g\. (\S+)`).FindStringSubmatch(r.stderr)
		if example == nil {
			continue
		}
		if r := serve(flag, example[1]); !strings.Contains(r.stderr, "--max-transfers 0") {
			t.Errorf("%s's example %s is refused: %s", flag, example[1], r.stderr)
		}
	}
	r := serve("--max-recv-msg-size", "4MiB")
	if !strings.Contains(r.stderr, `--max-recv-msg-size "4MiB" (4194304 bytes) is below its minimum, 4100KiB`) || strings.Contains(r.stderr, "4.0 MiB") {
		t.Errorf("--max-recv-msg-size 4MiB: %q; want the exact minimum, 4100KiB", r.stderr)
	}
	if r := serve("--max-recv-msg-size", "4100KiB"); !strings.Contains(r.stderr, "--max-transfers 0") {
		t.Errorf("--max-recv-msg-size at its minimum: %s", r.stderr)
	}
}

// TestUsageOnArgumentErrors: a wrong count of arguments, or an unknown
// flag, prints the command's usage line with the error.
func TestUsageOnArgumentErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"pull"}, []string{"cairn pull: accepts 1 arg(s), received 0", "\nusage: cairn pull DIGEST -o FILE|- [flags]\n"}},
		{[]string{"push", "a", "b"}, []string{"accepts 1 arg(s), received 2", "usage: cairn push FILE|- [flags]"}},
		{[]string{"rm"}, []string{"requires at least 1 arg(s)", "usage: cairn rm DIGEST|REPO:TAG|REPO@DIGEST... [flags]"}},
		{[]string{"lookup", "RUN make"}, []string{`unknown command "RUN make"`, "usage: cairn lookup --instruction I"}},
		{[]string{"ls", "--frob"}, []string{"unknown flag: --frob", "usage: cairn ls"}},
	} {
		r := runClientCLI(t, nil, nil, tc.args...)
		if r.code != exitFailure {
			t.Errorf("cairn %s: exit %d, want 1", strings.Join(tc.args, " "), r.code)
		}
		for _, w := range tc.want {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("cairn %s: stderr %q lacks %q", strings.Join(tc.args, " "), r.stderr, w)
			}
		}
	}
}

// TestErrorsSayEachContextOnce: an error from the server's core reads
// "record: cache: record step: invalid argument: ...", each layer's
// context once.
func TestErrorsSayEachContextOnce(t *testing.T) {
	env := map[string]string{"CAIRN_SERVER": startTestServer(t)}
	for _, args := range [][]string{
		{"record", "--instruction", "RUN x", "--build-arg", "novalue"},
		{"lookup", "--instruction", "RUN x", "--build-arg", "novalue"},
	} {
		r := runClientCLI(t, env, nil, args...)
		if r.code != exitFailure || !strings.Contains(r.stderr, `build arg "novalue"`) {
			t.Fatalf("cairn %s: exit %d, stderr %q", strings.Join(args, " "), r.code, r.stderr)
		}
		if n := strings.Count(r.stderr, "cache:"); n != 1 {
			t.Errorf("cairn %s: %q says \"cache:\" %d times", args[0], r.stderr, n)
		}
	}
}

// TestLookupChainOfAnyLength: a chain longer than the server takes in one
// call is looked up in several, each on the "next" of the one before.
func TestLookupChainOfAnyLength(t *testing.T) {
	addr := startTestServer(t)
	env := map[string]string{"CAIRN_SERVER": addr}
	ctx := context.Background()
	c, err := client.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n := cairnv1.MaxChainSteps + 2
	var chain strings.Builder
	var parent digest.Digest
	for i := range n {
		s := client.Step{Instruction: fmt.Sprintf("ENV I=%d", i)}
		rec, err := c.RecordStep(ctx, parent, s, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		parent = rec.Next
		fmt.Fprintln(&chain, s.Instruction)
	}

	r := runClientCLI(t, env, []byte(chain.String()), "lookup", "--chain", "-")
	if r.code != exitOK || !strings.HasSuffix(r.stdout, "next "+parent.String()+"\n") || strings.Count(r.stdout, "HIT ") != n {
		t.Fatalf("a chain of %d cached steps: exit %d, stderr %q, stdout ends %q", n, r.code, r.stderr, r.stdout[max(len(r.stdout)-200, 0):])
	}
	// A miss in the second call: the hits before it, and its step named.
	r = runClientCLI(t, env, []byte(chain.String()+"RUN make\nRUN test\n"), "lookup", "--chain", "-")
	if r.code != exitMiss || !strings.Contains(r.stderr, fmt.Sprintf("%d of %d steps cached; step %d (\"RUN make\")", n, n+2, n+1)) ||
		!strings.HasSuffix(r.stdout, "next "+parent.String()+"\n") {
		t.Fatalf("a chain that misses after %d steps: exit %d, stderr %q", n, r.code, r.stderr)
	}

	// The limits are in the help: one call's, and a line's.
	r = runClientCLI(t, nil, nil, "lookup", "--help")
	for _, want := range []string{"at most 1 MiB", fmt.Sprintf("at most %d steps per call", cairnv1.MaxChainSteps), "of any\nlength"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("lookup --help lacks %q", want)
		}
	}
	// A line above the limit is named.
	long := "RUN a\nRUN " + strings.Repeat("x", maxChainLine) + "\n"
	if _, err := parseChain(strings.NewReader(long), ""); err == nil || !strings.Contains(err.Error(), "line 2: longer than 1MiB") {
		t.Errorf("a line over 1 MiB: %v", err)
	}
}

// TestInvalidUTF8Named: a string that goes into an API message and is not
// UTF-8 is refused up front, naming its flag (or line, or argument).
func TestInvalidUTF8Named(t *testing.T) {
	env := map[string]string{"CAIRN_SERVER": startTestServer(t)}
	bad := "RUN \xff"
	for _, tc := range []struct {
		stdin string
		args  []string
		want  string
	}{
		{"", []string{"record", "--instruction", bad}, "--instruction"},
		{"", []string{"lookup", "--instruction", bad}, "--instruction"},
		{"", []string{"record", "--instruction", "RUN x", "--platform", "linux/\xfe"}, "--platform"},
		{"", []string{"record", "--instruction", "RUN x", "--build-arg", "A=\xc3"}, "--build-arg"},
		{"layer", []string{"push", "-", "--instruction", bad}, "--instruction"},
		{"layer", []string{"push", "-", "--media-type", "x/\xff"}, "--media-type"},
		{"RUN a\n" + bad + "\n", []string{"lookup", "--chain", "-"}, "line 2"},
		{"RUN a\n", []string{"lookup", "--chain", "-", "--platform", "\xff"}, "--platform"},
		{"", []string{"rm", "team/app:\xff"}, "argument"},
	} {
		r := runClientCLI(t, env, []byte(tc.stdin), tc.args...)
		if r.code != exitFailure || !strings.Contains(r.stderr, tc.want+" ") || !strings.Contains(r.stderr, "is not valid UTF-8") {
			t.Errorf("cairn %q: exit %d, stderr %q; want 1 and an error naming %s", tc.args, r.code, r.stderr, tc.want)
		}
	}
}

// TestRmHelpSaysWhatRmDoes: rm promises no space it does not free: the
// garbage collection (cairn gc) frees it.
func TestRmHelpSaysWhatRmDoes(t *testing.T) {
	r := runClientCLI(t, nil, nil, "rm", "--help")
	if !strings.Contains(r.stdout, "freed by\n                      the next garbage collection") || !strings.Contains(r.stdout, "cairn gc") {
		t.Errorf("rm --help:\n%s\nwant the space left to the garbage collection, and cairn gc named", r.stdout)
	}
}

// TestReadmeMatchesCLI: the README's table of commands lists every
// command, and its configuration reference every flag of serve, and
// nothing else.
func TestReadmeMatchesCLI(t *testing.T) {
	f, err := os.Open("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	readmeCmds, readmeFlags := map[string]bool{}, map[string]bool{}
	cmdRow := regexp.MustCompile("^\\| `cairn ([a-z-]+)")
	flagRow := regexp.MustCompile("^\\| (`--[a-z0-9-]+`(, )?)+ \\|")
	flagName := regexp.MustCompile("`--([a-z0-9-]+)`")
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "## ") {
			section = line
		}
		switch {
		case section == "## The CLI" && cmdRow.MatchString(line):
			readmeCmds[cmdRow.FindStringSubmatch(line)[1]] = true
		case strings.HasPrefix(section, "## Configuration reference") && flagRow.MatchString(line):
			for _, m := range flagName.FindAllStringSubmatch(flagRow.FindString(line), -1) {
				readmeFlags[m[1]] = true
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}

	all := commandFlags(t)
	cliCmds := map[string]bool{}
	for path := range all {
		if name, ok := strings.CutPrefix(path, "cairn "); ok && !strings.Contains(name, " ") && name != "help" && name != "completion" {
			cliCmds[name] = true
		}
	}
	diff := func(what string, a, b map[string]bool, aName, bName string) {
		for k := range a {
			if !b[k] {
				t.Errorf("%s %s is in %s, not in %s", what, k, aName, bName)
			}
		}
	}
	diff("command", cliCmds, readmeCmds, "the CLI", `the README's table under "## The CLI"`)
	diff("command", readmeCmds, cliCmds, "the README", "the CLI")
	serveFlags := map[string]bool{}
	for name := range all["cairn serve"] {
		if name != "help" {
			serveFlags[name] = true
		}
	}
	diff("flag", serveFlags, readmeFlags, "cairn serve", "the README's configuration reference")
	diff("flag", readmeFlags, serveFlags, "the README's configuration reference", "cairn serve")
	if len(readmeCmds) < 10 || len(readmeFlags) < 20 {
		t.Errorf("read %d commands and %d flags from the README: the tables were not found", len(readmeCmds), len(readmeFlags))
	}
}
