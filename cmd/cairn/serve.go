package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/backend/fs"
	"github.com/cairnbuild/cairn/backend/retry"
	"github.com/cairnbuild/cairn/backend/s3"
	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/metrics"
	"github.com/cairnbuild/cairn/server"
)

// Where serve keeps its state under --data.
const (
	indexSubdir = "index" // the Badger index
	blobsSubdir = "blobs" // the fs backend's objects, unless S3 holds them
)

// storageConfig is where the index and the blobs are: what `cairn serve`
// and `cairn reindex` share.
type storageConfig struct {
	data string

	s3Endpoint, s3Bucket, s3Region, s3Prefix string
	s3AccessKey, s3SecretKey, s3SessionToken string
	s3Insecure                               bool

	concurrency int
	logLevel    string
	level       slog.Level
}

// serveConfig is everything `cairn serve` is told, from flags and their
// CAIRN_* environment twins, validated by check.
type serveConfig struct {
	storageConfig
	listen        string
	metricsListen string

	gracePeriod       time.Duration
	maxRecvMsgSize    string // parsed into maxRecvBytes by check
	maxRecvBytes      int
	rpcTimeout        time.Duration
	streamIdleTimeout time.Duration
	maxTransfers      int
}

func newServeCmd(a *app) *cobra.Command {
	var cfg serveConfig
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the cairn server",
		Long: `Run the cairn server: the build cache and layer store over gRPC, with
grpc.health.v1 and server reflection.

With no flags it keeps everything under ./cairn-data: the index in
./cairn-data/index and the blobs in ./cairn-data/blobs, and listens on
127.0.0.1:7070. --s3-endpoint and --s3-bucket move the blobs to an
S3-compatible store (AWS S3, MinIO, Ceph RGW); the index stays under --data.

Every flag has an environment twin, shown in brackets; a flag given on the
command line wins over its twin. Without --s3-access-key the S3 credentials
come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials or
MINIO_ROOT_USER/MINIO_ROOT_PASSWORD.

On SIGTERM or SIGINT the server stops accepting calls, lets the calls in
flight finish for --grace-period, then cancels the rest; a push cut off
this way commits nothing.`,
		Args: cobra.NoArgs,
		RunE: withTwins(a, cfg.check, func(cmd *cobra.Command) error { return runServe(cmd.Context(), a, &cfg) }),
	}
	f := cmd.Flags()
	cfg.addFlags(f)
	f.StringVar(&cfg.listen, "listen", defaultServer, "gRPC listen address, host:port")
	f.StringVar(&cfg.metricsListen, "metrics-listen", "", "Prometheus /metrics listen address, host:port (empty: no metrics endpoint)")
	f.DurationVar(&cfg.gracePeriod, "grace-period", 30*time.Second, "on shutdown, how long calls in flight may take to finish")
	f.StringVar(&cfg.maxRecvMsgSize, "max-recv-msg-size", "8MiB", "largest gRPC message accepted; above 4MiB, to fit the largest chunk")
	f.DurationVar(&cfg.rpcTimeout, "rpc-timeout", server.DefaultUnaryTimeout, "longest a unary call may take, whatever the client's deadline")
	f.DurationVar(&cfg.streamIdleTimeout, "stream-idle-timeout", server.DefaultStreamIdleTimeout, "fail an upload whose client sends nothing for this long")
	f.IntVar(&cfg.maxTransfers, "max-transfers", server.DefaultMaxTransfers, "pushes, pulls and chunk transfers served at once; more wait (bounds memory)")
	f.VisitAll(func(fl *pflag.Flag) { fl.Usage += " [$" + envTwin(fl.Name) + "]" })
	return cmd
}

// addFlags registers the storage flags.
func (c *storageConfig) addFlags(f *pflag.FlagSet) {
	f.StringVar(&c.data, "data", "./cairn-data", "directory for the index (and the blobs, without S3)")
	f.StringVar(&c.s3Endpoint, "s3-endpoint", "", "S3 endpoint host[:port] (or http(s)://host[:port]); set to keep blobs in S3")
	f.StringVar(&c.s3Bucket, "s3-bucket", "", "S3 bucket, created if missing (required with --s3-endpoint)")
	f.StringVar(&c.s3Region, "s3-region", "", "S3 region (default: $AWS_REGION, else looked up)")
	f.StringVar(&c.s3Prefix, "s3-prefix", "", "prefix for every object key, to share a bucket")
	f.StringVar(&c.s3AccessKey, "s3-access-key", "", "S3 access key (default: the AWS credential chain)")
	f.StringVar(&c.s3SecretKey, "s3-secret-key", "", "S3 secret key (prefer the environment twin: flags show in ps)")
	f.StringVar(&c.s3SessionToken, "s3-session-token", "", "S3 session token, for temporary credentials")
	f.BoolVar(&c.s3Insecure, "s3-insecure", false, "talk plain HTTP to the S3 endpoint instead of HTTPS")
	f.IntVar(&c.concurrency, "concurrency", cache.DefaultConcurrency, "chunks one push or pull stores or reads at the same time")
	f.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
}

// envTwin is the environment variable of a flag: --s3-access-key is
// CAIRN_S3_ACCESS_KEY.
func envTwin(flag string) string {
	return "CAIRN_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// withTwins is the RunE of a command whose flags have environment twins:
// it applies the twins, checks the flags, then runs.
func withTwins(a *app, check func() error, run func(cmd *cobra.Command) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		if err := applyEnvTwins(a, cmd.Flags()); err != nil {
			return err
		}
		if err := check(); err != nil {
			return err
		}
		return run(cmd)
	}
}

// applyEnvTwins sets every flag not given on the command line from its
// environment twin, if that is set.
func applyEnvTwins(a *app, flags *pflag.FlagSet) error {
	var errs []error
	flags.VisitAll(func(fl *pflag.Flag) {
		if fl.Changed {
			return
		}
		name := envTwin(fl.Name)
		v := a.getenv(name)
		if v == "" {
			return
		}
		if err := fl.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %v", name, v, err))
		}
	})
	return errors.Join(errs...)
}

// check validates the storage flags and derives the parsed fields.
func (c *storageConfig) check() error {
	if c.data == "" {
		return errors.New("--data: empty; name the directory for the index")
	}
	if c.s3Endpoint == "" {
		for name, v := range map[string]string{"--s3-bucket": c.s3Bucket, "--s3-prefix": c.s3Prefix,
			"--s3-access-key": c.s3AccessKey, "--s3-secret-key": c.s3SecretKey, "--s3-region": c.s3Region} {
			if v != "" {
				return fmt.Errorf("%s needs --s3-endpoint (the blobs are on local disk without it)", name)
			}
		}
	} else {
		if c.s3Bucket == "" {
			return errors.New("--s3-endpoint needs --s3-bucket")
		}
		if c.s3Insecure && strings.HasPrefix(c.s3Endpoint, "https://") {
			return fmt.Errorf("--s3-insecure with an https:// endpoint %q", c.s3Endpoint)
		}
		if (c.s3AccessKey == "") != (c.s3SecretKey == "") {
			return errors.New("--s3-access-key and --s3-secret-key go together")
		}
	}
	if c.concurrency < 1 {
		return fmt.Errorf("--concurrency %d: want at least 1", c.concurrency)
	}
	if err := c.level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", c.logLevel)
	}
	return nil
}

// check validates the configuration and derives the parsed fields.
func (c *serveConfig) check() error {
	if err := c.storageConfig.check(); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(c.listen); err != nil {
		return fmt.Errorf("--listen %q: want host:port: %v", c.listen, err)
	}
	if c.metricsListen != "" {
		if _, _, err := net.SplitHostPort(c.metricsListen); err != nil {
			return fmt.Errorf("--metrics-listen %q: want host:port: %v", c.metricsListen, err)
		}
		if _, port, _ := net.SplitHostPort(c.listen); c.metricsListen == c.listen && port != "0" {
			return fmt.Errorf("--metrics-listen and --listen are both %s", c.listen)
		}
	}
	if c.gracePeriod < 0 {
		return fmt.Errorf("--grace-period %v: negative", c.gracePeriod)
	}
	n, err := humanize.ParseBytes(c.maxRecvMsgSize)
	if err != nil {
		return fmt.Errorf("--max-recv-msg-size %q: want a size like 8MiB: %v", c.maxRecvMsgSize, err)
	}
	if min := uint64(cache.MaxChunkSize + 4<<10); n < min || n > 1<<30 {
		return fmt.Errorf("--max-recv-msg-size %s: want %s to 1GiB (the largest chunk is %s)",
			c.maxRecvMsgSize, humanize.IBytes(min), humanize.IBytes(cache.MaxChunkSize))
	}
	c.maxRecvBytes = int(n)
	if c.rpcTimeout <= 0 || c.streamIdleTimeout <= 0 {
		return errors.New("--rpc-timeout and --stream-idle-timeout must be positive")
	}
	if c.maxTransfers < 1 {
		return fmt.Errorf("--max-transfers %d: want at least 1", c.maxTransfers)
	}
	return nil
}

// openBlobs opens the blob store: S3 with --s3-endpoint, else the fs
// store under --data; bm (if not nil) counts its requests, and retries
// wrap that. It returns the store, its kind and a description for logs.
func (cfg *storageConfig) openBlobs(ctx context.Context, log *slog.Logger, bm *metrics.Backend) (blobs backend.Store, kind, desc string, closeFn func() error, err error) {
	closeFn = func() error { return nil }
	if cfg.s3Endpoint != "" {
		st, err := s3.New(ctx, s3.Options{
			Endpoint: cfg.s3Endpoint, Bucket: cfg.s3Bucket, Region: cfg.s3Region, Prefix: cfg.s3Prefix,
			AccessKey: cfg.s3AccessKey, SecretKey: cfg.s3SecretKey, SessionToken: cfg.s3SessionToken,
			Secure: !cfg.s3Insecure && !strings.HasPrefix(cfg.s3Endpoint, "http://"),
		})
		if err != nil {
			return nil, "", "", nil, fmt.Errorf("blob store: %w", err)
		}
		blobs, kind = st, "s3"
		desc = "s3://" + cfg.s3Bucket + "/" + strings.TrimSuffix(cfg.s3Prefix, "/") + " at " + cfg.s3Endpoint
	} else {
		dir := filepath.Join(cfg.data, blobsSubdir)
		st, err := fs.New(dir)
		if err != nil {
			return nil, "", "", nil, fmt.Errorf("blob store: %w", err)
		}
		blobs, kind, desc, closeFn = st, "fs", dir, st.Close
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
	return blobs, kind, desc, closeFn, nil
}

// storage is an open cache over its blob store.
type storage struct {
	cache           *cache.Cache
	kind, blobsDesc string // "fs" or "s3", and where the blobs are
	indexDir        string
	closeBlobs      func() error
}

// open creates --data if needed and opens the blob store (openBlobs) and
// the index over it.
func (cfg *storageConfig) open(ctx context.Context, log *slog.Logger, bm *metrics.Backend) (*storage, error) {
	if err := os.MkdirAll(cfg.data, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	blobs, kind, desc, closeBlobs, err := cfg.openBlobs(ctx, log, bm)
	if err != nil {
		return nil, err
	}
	indexDir := filepath.Join(cfg.data, indexSubdir)
	c, err := cache.Open(ctx, cache.Options{Dir: indexDir, Backend: blobs, Concurrency: cfg.concurrency, Logger: log})
	if err != nil {
		closeBlobs()
		return nil, err
	}
	return &storage{cache: c, kind: kind, blobsDesc: desc, indexDir: indexDir, closeBlobs: closeBlobs}, nil
}

// close closes the index, then the blob store.
func (st *storage) close() error {
	err := st.cache.Close()
	if err != nil {
		err = fmt.Errorf("close cache: %w", err)
	}
	if cerr := st.closeBlobs(); cerr != nil && err == nil {
		err = fmt.Errorf("close blob store: %w", cerr)
	}
	return err
}

// runServe runs the server until ctx ends (a signal) or serving fails.
func runServe(ctx context.Context, a *app, cfg *serveConfig) (err error) {
	log := slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: cfg.level}))
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	bm, err := metrics.NewBackend(reg)
	if err != nil {
		return err
	}

	st, err := cfg.open(ctx, log, bm)
	if err != nil {
		return err
	}
	c, kind, blobsDesc, indexDir := st.cache, st.kind, st.blobsDesc, st.indexDir
	// Closed after the server has stopped: no handler uses it any more.
	defer func() {
		if cerr := st.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	reg.MustRegister(metrics.NewCacheCollector(c.Stats, 0, log))

	srv, err := server.New(c, server.Options{
		MaxRecvMsgSize:    cfg.maxRecvBytes,
		UnaryTimeout:      cfg.rpcTimeout,
		StreamIdleTimeout: cfg.streamIdleTimeout,
		MaxTransfers:      cfg.maxTransfers,
		Registerer:        reg,
		Logger:            log,
	})
	if err != nil {
		return err
	}
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp", cfg.listen)
	if err != nil {
		return err
	}
	errc := make(chan error, 2)
	metricsDesc := "off"
	var httpSrv *http.Server
	if cfg.metricsListen != "" {
		mlis, err := lc.Listen(ctx, "tcp", cfg.metricsListen)
		if err != nil {
			lis.Close()
			return fmt.Errorf("metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		metricsDesc = "http://" + mlis.Addr().String() + "/metrics"
		go func() {
			if err := httpSrv.Serve(mlis); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("metrics: %w", err)
			}
		}()
	}
	go func() {
		if err := srv.Serve(lis); err != nil {
			errc <- fmt.Errorf("serve: %w", err)
		}
	}()
	log.Info("cairn serving", "listen", lis.Addr().String(), "backend", kind, "blobs", blobsDesc, "index", indexDir,
		"metrics", metricsDesc, "max_recv_msg_size", humanize.IBytes(uint64(cfg.maxRecvBytes)),
		"grace_period", cfg.gracePeriod, "version", serveVersion())

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "grace_period", cfg.gracePeriod)
	case serveErr = <-errc:
		log.Error("shutting down after an error", "err", serveErr)
	}
	grace, cancel := context.WithTimeout(context.Background(), cfg.gracePeriod)
	defer cancel()
	srv.Shutdown(grace)
	if httpSrv != nil {
		hctx, hcancel := context.WithTimeout(context.Background(), time.Second)
		_ = httpSrv.Shutdown(hctx)
		hcancel()
	}
	log.Info("stopped")
	return serveErr
}

// serveVersion is the version for the start-up line, as `cairn version`
// prints it.
func serveVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
