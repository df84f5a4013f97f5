package storage

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/cairnbuild/cairn/cache"
)

// parse registers the storage flags on a fresh flag set and parses args.
func parse(t *testing.T, args ...string) *Config {
	t.Helper()
	var c Config
	f := pflag.NewFlagSet("test", pflag.ContinueOnError)
	c.AddFlags(f)
	if err := f.Parse(args); err != nil {
		t.Fatal(err)
	}
	return &c
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string // "" for valid
	}{
		{"defaults", nil, ""},
		{"s3", []string{"--s3-endpoint", "127.0.0.1:9000", "--s3-bucket", "b", "--s3-access-key", "k", "--s3-secret-key", "s"}, ""},
		{"empty data", []string{"--data", ""}, "--data"},
		{"bucket without endpoint", []string{"--s3-bucket", "b"}, "--s3-bucket needs --s3-endpoint"},
		{"session token without endpoint", []string{"--s3-session-token", "t"}, "--s3-session-token needs --s3-endpoint"},
		{"endpoint without bucket", []string{"--s3-endpoint", "x:1"}, "--s3-endpoint needs --s3-bucket"},
		{"half the credentials", []string{"--s3-endpoint", "x:1", "--s3-bucket", "b", "--s3-secret-key", "s"}, "go together"},
		{"insecure https", []string{"--s3-endpoint", "https://x:1", "--s3-bucket", "b", "--s3-insecure"}, "--s3-insecure"},
		{"no concurrency", []string{"--concurrency", "0"}, "--concurrency 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := parse(t, tc.args...).Check()
			if tc.want == "" && err != nil {
				t.Fatalf("Check() = %v, want nil", err)
			}
			if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Check() = %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

func TestS3Options(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		secure bool
	}{
		{[]string{"--s3-endpoint", "s3.example.com"}, true},
		{[]string{"--s3-endpoint", "https://s3.example.com"}, true},
		{[]string{"--s3-endpoint", "http://127.0.0.1:9000"}, false},
		{[]string{"--s3-endpoint", "127.0.0.1:9000", "--s3-insecure"}, false},
	} {
		c := parse(t, append(tc.args, "--s3-bucket", "b", "--s3-prefix", "ci/", "--s3-access-key", "AKEY", "--s3-secret-key", "SKEY")...)
		o := c.S3.Options()
		if o.Secure != tc.secure || o.Bucket != "b" || o.Prefix != "ci/" || o.AccessKey != "AKEY" || o.SecretKey != "SKEY" {
			t.Errorf("%v: Options() = %+v, want secure %v and the flags' bucket, prefix and keys", tc.args, o, tc.secure)
		}
		if got, want := c.S3.String(), "s3://b/ci at "+c.S3.Endpoint; got != want {
			t.Errorf("%v: String() = %q, want %q", tc.args, got, want)
		}
	}
}

// TestOpenFS opens a store on local disk: --data is created, with the
// index and the blobs under it, and closing it releases the index.
func TestOpenFS(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	c := parse(t, "--data", data)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for range 2 { // the second open finds the index unlocked
		st, err := c.Open(context.Background(), log, nil)
		if err != nil {
			t.Fatal(err)
		}
		if st.Kind != "fs" || st.Blobs != filepath.Join(data, BlobsSubdir) || st.IndexDir != filepath.Join(data, IndexSubdir) {
			t.Errorf("opened %s at %s, index %s; want fs under %s", st.Kind, st.Blobs, st.IndexDir, data)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
	}
	for _, sub := range []string{IndexSubdir, BlobsSubdir} {
		if _, err := os.Stat(filepath.Join(data, sub)); err != nil {
			t.Errorf("%s: %v", sub, err)
		}
	}
}

// TestGCFlags: the quota and retention flags are checked and reach the
// background collection's options.
func TestGCFlags(t *testing.T) {
	parseGC := func(t *testing.T, args ...string) *Config {
		t.Helper()
		var c Config
		f := pflag.NewFlagSet("test", pflag.ContinueOnError)
		c.AddFlags(f)
		c.AddGCFlags(f)
		if err := f.Parse(args); err != nil {
			t.Fatal(err)
		}
		return &c
	}
	c := parseGC(t)
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	o := c.GCOptions()
	if o.UntaggedMaxAge != cache.DefaultUntaggedMaxAge || o.MaxSize != 0 || o.KeepTags != nil {
		t.Errorf("defaults: untagged %v, max size %d, keep %v; want a day, no quota, none kept", o.UntaggedMaxAge, o.MaxSize, o.KeepTags)
	}
	if o.CompactAge != cache.DefaultCompactAge || o.CompactPace != cache.DefaultCompactPace {
		t.Errorf("defaults: compact age %v, pace %v; want the cache's %v, %v", o.CompactAge, o.CompactPace, cache.DefaultCompactAge, cache.DefaultCompactPace)
	}
	c = parseGC(t, "--compact-age", "0", "--compact-pace", "1")
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	if o = c.GCOptions(); o.CompactAge != 0 || o.CompactPace != 1 {
		t.Errorf("--compact-age 0 --compact-pace 1: age %v, pace %v; want 0 (no compaction), 1", o.CompactAge, o.CompactPace)
	}

	c = parseGC(t, "--untagged-max-age", "0", "--max-size", "10GiB", "--keep-tags", "main|v.*")
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	o = c.GCOptions()
	if o.UntaggedMaxAge >= 0 || o.MaxSize != 10<<30 || o.KeepTags == nil {
		t.Fatalf("set: untagged %v, max size %d, keep %v", o.UntaggedMaxAge, o.MaxSize, o.KeepTags)
	}
	for tag, want := range map[string]bool{"main": true, "v1.2": true, "mainline": false, "dev-v1": false} {
		if o.KeepTags.MatchString(tag) != want {
			t.Errorf("--keep-tags 'main|v.*': tag %q matched %v, want %v", tag, !want, want)
		}
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--untagged-max-age", "-1h"}, "--untagged-max-age"},
		{[]string{"--max-size", "lots"}, "--max-size"},
		{[]string{"--keep-tags", "v(1"}, "--keep-tags"},
		{[]string{"--keep-tags", "a)|(b"}, "--keep-tags"},
		{[]string{"--compact-age", "-1h"}, "--compact-age"},
		{[]string{"--compact-pace", "-0.1"}, "--compact-pace"},
		{[]string{"--compact-pace", "1.5"}, "--compact-pace"},
		{[]string{"--compact-pace", "NaN"}, "--compact-pace"},
	} {
		if err := parseGC(t, tc.args...).Check(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: Check() = %v, want an error naming %s", tc.args, err, tc.want)
		}
	}
}
