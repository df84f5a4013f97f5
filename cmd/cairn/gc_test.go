package main

import (
	"strings"
	"testing"
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
	} {
		r := runClientCLI(t, env, nil, append([]string{"gc", "--dry-run"}, tc.args...)...)
		if r.code != exitFailure || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("gc %q: exit %d, stderr %q; want 1 and an error naming %s", tc.args, r.code, r.stderr, tc.want)
		}
	}
}
