// Package storage is the storage flags of the cairn commands, defined once:
// where a store's index and blobs are (--data, the --s3-* flags) and how
// hard it works (--concurrency). `cairn serve` and `cairn reindex` take all
// of them (Config) and open the store they describe (Config.Open);
// `cairn-bench s3`, which talks to the bucket without cairn, takes the S3
// ones (S3). Their environment twins come from package envtwin, like every
// other flag's.
package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/backend/fs"
	"github.com/cairnbuild/cairn/backend/retry"
	"github.com/cairnbuild/cairn/backend/s3"
	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/cmd/internal/sizeflag"
	"github.com/cairnbuild/cairn/metrics"
)

// Where a store keeps its state under --data.
const (
	IndexSubdir   = "index"   // the Badger index
	BlobsSubdir   = "blobs"   // the fs backend's objects, unless S3 holds them
	RebuiltSubdir = "rebuilt" // copies of compressed blobs served rebuilt (a cache; local even with S3)
	SpoolSubdir   = "spool"   // compressed blobs while they are stored (unlinked temp files)
)

// S3 is the S3 flags: the bucket that holds the blobs instead of the local
// disk when Endpoint is set.
type S3 struct {
	Endpoint, Bucket, Region, Prefix   string
	AccessKey, SecretKey, SessionToken string
	Insecure                           bool
}

// AddFlags registers the --s3-* flags.
func (s *S3) AddFlags(f *pflag.FlagSet) {
	f.StringVar(&s.Endpoint, "s3-endpoint", "", "S3 endpoint host[:port] (or http(s)://host[:port]); set to keep blobs in S3")
	f.StringVar(&s.Bucket, "s3-bucket", "", "S3 bucket, created if missing (required with --s3-endpoint)")
	f.StringVar(&s.Region, "s3-region", "", "S3 region (default: $AWS_REGION, else looked up)")
	f.StringVar(&s.Prefix, "s3-prefix", "", "prefix for every object key, to share a bucket")
	f.StringVar(&s.AccessKey, "s3-access-key", "", "S3 access key (default: the AWS credential chain)")
	f.StringVar(&s.SecretKey, "s3-secret-key", "", "S3 secret key (prefer the environment twin: flags show in ps)")
	f.StringVar(&s.SessionToken, "s3-session-token", "", "S3 session token, for temporary credentials")
	f.BoolVar(&s.Insecure, "s3-insecure", false, "talk plain HTTP to the S3 endpoint instead of HTTPS")
}

// Check validates the S3 flags. Without --s3-endpoint none of the others
// may be set (the blobs are on local disk then).
func (s *S3) Check() error {
	if s.Endpoint == "" {
		for _, fl := range []struct{ name, v string }{
			{"--s3-bucket", s.Bucket}, {"--s3-prefix", s.Prefix}, {"--s3-region", s.Region},
			{"--s3-access-key", s.AccessKey}, {"--s3-secret-key", s.SecretKey}, {"--s3-session-token", s.SessionToken},
		} {
			if fl.v != "" {
				return fmt.Errorf("%s needs --s3-endpoint (the blobs are on local disk without it)", fl.name)
			}
		}
		return nil
	}
	if s.Bucket == "" {
		return errors.New("--s3-endpoint needs --s3-bucket")
	}
	if s.Insecure && strings.HasPrefix(s.Endpoint, "https://") {
		return fmt.Errorf("--s3-insecure with an https:// endpoint %q", s.Endpoint)
	}
	if (s.AccessKey == "") != (s.SecretKey == "") {
		return errors.New("--s3-access-key and --s3-secret-key go together")
	}
	return nil
}

// Secure reports whether the endpoint is spoken to over HTTPS.
func (s *S3) Secure() bool {
	return !s.Insecure && !strings.HasPrefix(s.Endpoint, "http://")
}

// Options is the S3 backend's configuration from the flags.
func (s *S3) Options() s3.Options {
	return s3.Options{
		Endpoint: s.Endpoint, Bucket: s.Bucket, Region: s.Region, Prefix: s.Prefix,
		AccessKey: s.AccessKey, SecretKey: s.SecretKey, SessionToken: s.SessionToken,
		Secure: s.Secure(),
	}
}

// String describes the bucket for logs: s3://bucket/prefix at endpoint.
// It never shows the credentials.
func (s *S3) String() string {
	return "s3://" + s.Bucket + "/" + strings.TrimSuffix(s.Prefix, "/") + " at " + s.Endpoint
}

// Config is every storage flag: what the commands that open a store take.
type Config struct {
	Data        string // the index's directory, and the blobs' without S3
	S3          S3
	Concurrency int // chunks one push or pull stores or reads at once

	// Upload sessions of the registry front (zero: the cache's defaults);
	// serve sets them, the client commands leave them alone.
	MaxUploads        int
	UploadIdleTimeout time.Duration

	// Compressed blobs (serve sets them; see cache.Options).
	KeepCompressed  bool
	PlainTars       bool
	MaxExpanded     string // a size, e.g. 64GiB
	RebuiltCache    string // a size; 0 turns the rebuilt-blob cache off
	maxExpanded     int64
	rebuiltCacheMax int64

	// The background collection (serve sets them; see cache.Options).
	GCInterval, GCGrace, GCPackGrace, StepMaxAge time.Duration
	UntaggedMaxAge                               time.Duration
	MaxSize                                      string // a size; 0: no quota
	KeepTags                                     string // a regexp of whole tags; empty: none
	maxSize                                      int64
	keepTags                                     *regexp.Regexp

	// Compaction in the collections (serve sets them; see
	// cache.GCOptions): CompactAge 0 turns it off; CompactPace is a share
	// of one core, 0 or 1 meaning no limit.
	CompactAge  time.Duration
	CompactPace float64

	// The background scrub (serve sets them; see cache.Options).
	ScrubInterval time.Duration
	ScrubRate     string // bytes a second, a size
	scrubRate     int64
}

// AddGCFlags registers the flags of the background collection: serve's.
func (c *Config) AddGCFlags(f *pflag.FlagSet) {
	f.DurationVar(&c.GCInterval, "gc-interval", time.Hour, "collect garbage in the background this long after start and after each run (0: never; cairn gc runs one now)")
	f.DurationVar(&c.GCGrace, "gc-grace", cache.DefaultGCGrace, "the background collection keeps unreferenced chunks touched within this period")
	f.DurationVar(&c.GCPackGrace, "gc-pack-grace", cache.DefaultPackGrace, "the background collection deletes a marked pack this long after marking it")
	f.DurationVar(&c.StepMaxAge, "step-max-age", 0, "the background collection deletes step records neither recorded nor hit within this period, e.g. 720h (0: keep them)")
	f.DurationVar(&c.UntaggedMaxAge, "untagged-max-age", cache.DefaultUntaggedMaxAge, "a collection keeps a registry manifest no tag reaches this long after its last push or pull (0: not at all)")
	f.StringVar(&c.MaxSize, "max-size", "0", "the quota: when the packs hold more bytes, a collection evicts the least recently used layers and tagged manifests until it estimates the store under it, e.g. 500GiB (0: no quota)")
	f.StringVar(&c.KeepTags, "keep-tags", "", "tags the quota never evicts: a Go regular expression matching whole tags, e.g. 'main|latest|v.*' (empty: none)")
	f.DurationVar(&c.CompactAge, "compact-age", cache.DefaultCompactAge, "a collection compacts the packs none of whose chunks was touched within this period: their chunks rewritten into frames of several, compressed harder (0: no compaction)")
	f.Float64Var(&c.CompactPace, "compact-pace", cache.DefaultCompactPace, "share of one core a compaction takes at most, e.g. 0.5 (0 or 1: no limit)")
}

// AddScrubFlags registers the flags of the background scrub: serve's.
func (c *Config) AddScrubFlags(f *pflag.FlagSet) {
	f.DurationVar(&c.ScrubInterval, "scrub-interval", 24*time.Hour, "verify every stored chunk in the background this long after start and after each run (0: never; cairn verify runs one now)")
	f.StringVar(&c.ScrubRate, "scrub-rate", "16MiB", "bytes a second the background scrub reads, at most")
}

// AddCompressedFlags registers the flags of compressed blobs: serve's.
func (c *Config) AddCompressedFlags(f *pflag.FlagSet) {
	f.BoolVar(&c.KeepCompressed, "keep-compressed", false, "store gzip and zstd blobs as they come, not as their uncompressed content plus the encoder that rebuilds them")
	f.BoolVar(&c.PlainTars, "plain-tars", false, "store tar layers as they come, not as their files' contents and their metadata apart")
	f.StringVar(&c.MaxExpanded, "max-expanded-size", "64GiB", "refuse a compressed blob whose content is larger than this (a decompression bomb)")
	f.StringVar(&c.RebuiltCache, "rebuilt-cache-size", "4GiB", "bytes of rebuilt compressed blobs kept under --data/rebuilt, so hot layers are served at disk speed (0: none)")
}

// AddFlags registers the storage flags.
func (c *Config) AddFlags(f *pflag.FlagSet) {
	f.StringVar(&c.Data, "data", "./cairn-data", "directory for the index (and the blobs, without S3)")
	c.S3.AddFlags(f)
	f.IntVar(&c.Concurrency, "concurrency", cache.DefaultConcurrency, "chunks one push or pull stores or reads at the same time")
}

// Check validates the storage flags.
func (c *Config) Check() error {
	if c.Data == "" {
		return errors.New("--data: empty; name the directory for the index")
	}
	if err := c.S3.Check(); err != nil {
		return err
	}
	if c.Concurrency < 1 {
		return fmt.Errorf("--concurrency %d: want at least 1", c.Concurrency)
	}
	if c.MaxExpanded != "" {
		n, err := sizeflag.Parse("--max-expanded-size", c.MaxExpanded, "64GiB", 1<<20, 1<<50)
		if err != nil {
			return err
		}
		c.maxExpanded = n
	}
	if c.GCInterval < 0 || c.GCGrace < 0 || c.GCPackGrace < 0 || c.StepMaxAge < 0 || c.UntaggedMaxAge < 0 {
		return fmt.Errorf("--gc-interval, --gc-grace, --gc-pack-grace, --step-max-age and --untagged-max-age must not be negative")
	}
	if c.CompactAge < 0 {
		return fmt.Errorf("--compact-age %v: must not be negative (0: no compaction)", c.CompactAge)
	}
	if !(c.CompactPace >= 0 && c.CompactPace <= 1) { // NaN too
		return fmt.Errorf("--compact-pace %v: want a share of one core from 0 to 1 (0 or 1: no limit)", c.CompactPace)
	}
	if c.MaxSize != "" {
		n, err := sizeflag.Parse("--max-size", c.MaxSize, "500GiB", 0, 1<<60)
		if err != nil {
			return err
		}
		c.maxSize = n
	}
	if c.KeepTags != "" {
		// Alone first: "a)|(b" would compile once wrapped, meaning
		// something else.
		if _, err := regexp.Compile(c.KeepTags); err != nil {
			return fmt.Errorf("--keep-tags %q is not a regular expression (Go RE2 syntax): %v", c.KeepTags, err)
		}
		c.keepTags = regexp.MustCompile("^(?:" + c.KeepTags + ")$")
	}
	if c.ScrubInterval < 0 {
		return fmt.Errorf("--scrub-interval %v: must not be negative", c.ScrubInterval)
	}
	if c.ScrubRate != "" {
		n, err := sizeflag.Parse("--scrub-rate", c.ScrubRate, "16MiB", 1<<10, 1<<40)
		if err != nil {
			return err
		}
		c.scrubRate = n
	}
	if c.RebuiltCache != "" {
		n, err := sizeflag.Parse("--rebuilt-cache-size", c.RebuiltCache, "4GiB", 0, 1<<50)
		if err != nil {
			return err
		}
		c.rebuiltCacheMax = n
	}
	return nil
}

// GCOptions is the background collection's options, from the flags (after
// Check). Serve gives the server the quota, retention and compaction among
// them, for the collections cairn gc asks for.
func (c *Config) GCOptions() cache.GCOptions {
	return cache.GCOptions{Grace: noneIfZero(c.GCGrace), PackGrace: noneIfZero(c.GCPackGrace), StepMaxAge: c.StepMaxAge,
		UntaggedMaxAge: noneIfZero(c.UntaggedMaxAge), MaxSize: c.maxSize, KeepTags: c.keepTags,
		CompactAge: c.CompactAge, CompactPace: c.CompactPace,
		Pace: cache.DefaultBackgroundPace}
}

// Store is an open cache over its blob store. Close it when done.
type Store struct {
	Cache    *cache.Cache
	Kind     string // the blob store's kind: "fs" or "s3"
	Blobs    string // where the blobs are, for logs
	IndexDir string

	closeBlobs func() error
}

// Open creates --data if needed, opens the blob store (S3 with
// --s3-endpoint, else a directory under --data) and the index over it. bm,
// if not nil, counts the blob store's requests; retries wrap that, and log
// gets a debug line per retry.
func (c *Config) Open(ctx context.Context, log *slog.Logger, bm *metrics.Backend) (*Store, error) {
	if err := os.MkdirAll(c.Data, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	st := &Store{IndexDir: filepath.Join(c.Data, IndexSubdir), closeBlobs: func() error { return nil }}
	var blobs backend.Store
	if c.S3.Endpoint != "" {
		b, err := s3.New(ctx, c.S3.Options())
		if err != nil {
			return nil, fmt.Errorf("blob store: %w", err)
		}
		blobs, st.Kind, st.Blobs = b, "s3", c.S3.String()
	} else {
		dir := filepath.Join(c.Data, BlobsSubdir)
		b, err := fs.New(dir)
		if err != nil {
			return nil, fmt.Errorf("blob store: %w", err)
		}
		blobs, st.Kind, st.Blobs, st.closeBlobs = b, "fs", dir, b.Close
	}
	var onRetry func(string)
	if bm != nil {
		blobs, onRetry = bm.Wrap(blobs), bm.OnRetry
	}
	blobs = retry.New(blobs, retry.Options{OnRetry: func(e retry.Event) {
		if onRetry != nil {
			onRetry(e.Op)
		}
		log.Debug("retrying blob store request", "op", e.Op, "key", e.Key, "attempt", e.Attempt, "err", e.Err)
	}})
	opts := cache.Options{Dir: st.IndexDir, Backend: blobs, Concurrency: c.Concurrency, Logger: log,
		MaxUploads: c.MaxUploads, UploadIdleTimeout: c.UploadIdleTimeout,
		KeepCompressed: c.KeepCompressed, PlainTars: c.PlainTars, MaxExpandedSize: c.maxExpanded,
		ScrubInterval: c.ScrubInterval, ScrubRate: c.scrubRate,
		GCInterval: c.GCInterval, GCOptions: c.GCOptions()}
	if c.rebuiltCacheMax > 0 {
		opts.RebuiltCacheDir, opts.RebuiltCacheSize = filepath.Join(c.Data, RebuiltSubdir), c.rebuiltCacheMax
	} else {
		// On the data disk, not the system's temporary directory (often
		// a tmpfs: memory).
		opts.SpoolDir = filepath.Join(c.Data, SpoolSubdir)
		if err := os.MkdirAll(opts.SpoolDir, 0o700); err != nil {
			_ = st.closeBlobs()
			return nil, fmt.Errorf("spool directory: %w", err)
		}
	}
	cc, err := cache.Open(ctx, opts)
	if err != nil {
		_ = st.closeBlobs()
		return nil, err
	}
	st.Cache = cc
	return st, nil
}

// Close closes the index, then the blob store.
func (s *Store) Close() error {
	err := s.Cache.Close()
	if err != nil {
		err = fmt.Errorf("close cache: %w", err)
	}
	if cerr := s.closeBlobs(); cerr != nil && err == nil {
		err = fmt.Errorf("close blob store: %w", cerr)
	}
	return err
}

// noneIfZero maps a flag's 0 ("none") to cache.GCOptions' negative.
func noneIfZero(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
