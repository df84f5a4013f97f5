package main

import (
	"bytes"
	"context"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cairnbuild/cairn/client"
)

// TestGCQuotaFlags: gc's quota and retention flags reach the server (a
// real one, over an empty store), the report's lines are printed, and bad
// values fail before any call, naming the flag.
func TestGCQuotaFlags(t *testing.T) {
	env := map[string]string{"CAIRN_SERVER": startTestServer(t)}
	r := runClientCLI(t, env, nil, "gc", "--dry-run", "--untagged-max-age", "0", "--max-size", "1GiB", "--keep-tags", "main|v.*")
	if r.code != 0 {
		t.Fatalf("gc --dry-run with the quota flags: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"untagged manifests", "unreached layers", "stored"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("gc --dry-run: no %q line in\n%s", want, r.stdout)
		}
	}
	r = runClientCLI(t, env, nil, "gc", "--grace", "0", "--pack-grace", "0", "--max-size", "1GiB")
	if r.code != 0 {
		t.Fatalf("gc --max-size 1GiB: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"evicted", "0 layers, 0 tagged manifests", "deleted layers"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("gc: no %q in\n%s", want, r.stdout)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--untagged-max-age", "-1h"}, "--untagged-max-age"},
		{[]string{"--untagged-max-age", "a day"}, "--untagged-max-age"},
		{[]string{"--max-size", "lots"}, "--max-size"},
		{[]string{"--keep-tags", "v(1"}, "--keep-tags"},
		{[]string{"--compact-age", "-1h"}, "--compact-age"},
		{[]string{"--compact-age", "soon"}, "--compact-age"},
	} {
		r := runClientCLI(t, env, nil, append([]string{"gc", "--dry-run"}, tc.args...)...)
		if r.code != exitFailure || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("gc %q: exit %d, stderr %q; want 1 and an error naming %s", tc.args, r.code, r.stderr, tc.want)
		}
	}
}

// TestGCCompaction: gc --compact-age reaches the server (a real one, whose
// default is no compaction), the report shows the plan and what was
// compacted, and stat shows the chunks move from the ingest tier to the
// compacted one.
func TestGCCompaction(t *testing.T) {
	addr := startTestServer(t)
	env := map[string]string{"CAIRN_SERVER": addr}
	ctx := context.Background()
	c, err := client.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 2 {
		if _, err := c.Push(ctx, bytes.NewReader(testLayer(uint64(i+1), 2<<20)), client.PushOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	stat := func() client.Stats {
		t.Helper()
		r := runClientCLI(t, env, nil, "stat", "--json")
		var st client.Stats
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &st) != nil {
			t.Fatalf("stat --json: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
		}
		return st
	}
	before := stat()
	if before.Chunks == 0 || before.IngestChunks != before.Chunks || before.IngestBytes != before.StoredBytes || before.CompactedChunks != 0 {
		t.Fatalf("after pushes: %+v; want everything in the ingest tier", before)
	}

	compacted := regexp.MustCompile(`(?m)^compacted +(\d+) packs: `)
	planned := regexp.MustCompile(`(?m)^compact +(\d+) packs untouched`)
	count := func(re *regexp.Regexp, out string) int {
		t.Helper()
		m := re.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no line matching %s in\n%s", re, out)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	// The server's default here is no compaction, and 0 asks for none.
	for _, args := range [][]string{{}, {"--compact-age", "0"}} {
		r := runClientCLI(t, env, nil, append([]string{"gc", "--grace", "0", "--pack-grace", "0"}, args...)...)
		if r.code != 0 {
			t.Fatalf("gc %q: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
		}
		if p, n := count(planned, r.stdout), count(compacted, r.stdout); p != 0 || n != 0 {
			t.Errorf("gc %q: %d packs planned, %d compacted; want none", args, p, n)
		}
	}
	// Touches are whole seconds: a nanosecond counts the pushes, made in
	// an earlier or the same second, as older.
	r := runClientCLI(t, env, nil, "gc", "--dry-run", "--compact-age", "1ns")
	if r.code != 0 || count(planned, r.stdout) == 0 || strings.Contains(r.stdout, "\ncompacted ") {
		t.Errorf("gc --dry-run --compact-age 1ns: exit %d; want packs planned, none compacted:\n%s", r.code, r.stdout)
	}
	r = runClientCLI(t, env, nil, "gc", "--grace", "0", "--pack-grace", "0", "--compact-age", "1ns", "--json")
	var rep client.GCReport
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &rep) != nil {
		t.Fatalf("gc --compact-age 1ns --json: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if rep.CompactPacks == 0 || rep.CompactedPacks != rep.CompactPacks || rep.CompactRead != before.UniqueBytes || rep.CompactWritten <= 0 {
		t.Errorf("gc --compact-age 1ns: %+v; want every pack compacted, the %d unique bytes read", rep, before.UniqueBytes)
	}
	after := stat()
	if after.CompactedChunks != before.Chunks || after.IngestChunks != 0 || after.CompactedBytes != after.StoredBytes {
		t.Errorf("after compaction: %+v; want every chunk in the compacted tier", after)
	}
	r = runClientCLI(t, env, nil, "stat")
	for _, line := range []string{"ingest", "compacted"} {
		if !strings.Contains(r.stdout, "\n"+line+" ") {
			t.Errorf("stat shows no %q line:\n%s", line, r.stdout)
		}
	}
}
