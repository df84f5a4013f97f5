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

// serveConfig is everything `cairn serve` is told, from flags and their
// CAIRN_* environment twins, validated by check.
type serveConfig struct {
	data          string
	listen        string
	metricsListen string

	s3Endpoint, s3Bucket, s3Region, s3Prefix string
	s3AccessKey, s3SecretKey, s3SessionToken string
	s3Insecure                               bool

	gracePeriod       time.Duration
	maxRecvMsgSize    string // parsed into maxRecvBytes by check
	maxRecvBytes      int
	rpcTimeout        time.Duration
	streamIdleTimeout time.Duration
	concurrency       int
	maxTransfers      int
	logLevel          string
	level             slog.Level
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
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnvTwins(a, cmd.Flags()); err != nil {
				return err
			}
			if err := cfg.check(); err != nil {
				return err
			}
			return runServe(cmd.Context(), a, &cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.data, "data", "./cairn-data", "directory for the index (and the blobs, without S3)")
	f.StringVar(&cfg.listen, "listen", defaultServer, "gRPC listen address, host:port")
	f.StringVar(&cfg.metricsListen, "metrics-listen", "", "Prometheus /metrics listen address, host:port (empty: no metrics endpoint)")
	f.StringVar(&cfg.s3Endpoint, "s3-endpoint", "", "S3 endpoint host[:port] (or http(s)://host[:port]); set to keep blobs in S3")
	f.StringVar(&cfg.s3Bucket, "s3-bucket", "", "S3 bucket, created if missing (required with --s3-endpoint)")
	f.StringVar(&cfg.s3Region, "s3-region", "", "S3 region (default: $AWS_REGION, else looked up)")
	f.StringVar(&cfg.s3Prefix, "s3-prefix", "", "prefix for every object key, to share a bucket")
	f.StringVar(&cfg.s3AccessKey, "s3-access-key", "", "S3 access key (default: the AWS credential chain)")
	f.StringVar(&cfg.s3SecretKey, "s3-secret-key", "", "S3 secret key (prefer the environment twin: flags show in ps)")
	f.StringVar(&cfg.s3SessionToken, "s3-session-token", "", "S3 session token, for temporary credentials")
	f.BoolVar(&cfg.s3Insecure, "s3-insecure", false, "talk plain HTTP to the S3 endpoint instead of HTTPS")
	f.DurationVar(&cfg.gracePeriod, "grace-period", 30*time.Second, "on shutdown, how long calls in flight may take to finish")
	f.StringVar(&cfg.maxRecvMsgSize, "max-recv-msg-size", "8MiB", "largest gRPC message accepted; above 4MiB, to fit the largest chunk")
	f.DurationVar(&cfg.rpcTimeout, "rpc-timeout", server.DefaultUnaryTimeout, "longest a unary call may take, whatever the client's deadline")
	f.DurationVar(&cfg.streamIdleTimeout, "stream-idle-timeout", server.DefaultStreamIdleTimeout, "fail an upload whose client sends nothing for this long")
	f.IntVar(&cfg.maxTransfers, "max-transfers", server.DefaultMaxTransfers, "pushes, pulls and chunk transfers served at once; more wait (bounds memory)")
	f.IntVar(&cfg.concurrency, "concurrency", cache.DefaultConcurrency, "chunks one push or pull stores or reads at the same time")
	f.StringVar(&cfg.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.VisitAll(func(fl *pflag.Flag) { fl.Usage += " [$" + envTwin(fl.Name) + "]" })
	return cmd
}

// envTwin is the environment variable of a flag: --s3-access-key is
// CAIRN_S3_ACCESS_KEY.
func envTwin(flag string) string {
	return "CAIRN_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
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

// check validates the configuration and derives the parsed fields.
func (c *serveConfig) check() error {
	if c.data == "" {
		return errors.New("--data: empty; name the directory for the index")
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
	if c.concurrency < 1 {
		return fmt.Errorf("--concurrency %d: want at least 1", c.concurrency)
	}
	if c.maxTransfers < 1 {
		return fmt.Errorf("--max-transfers %d: want at least 1", c.maxTransfers)
	}
	if err := c.level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", c.logLevel)
	}
	return nil
}

// runServe runs the server until ctx ends (a signal) or serving fails.
func runServe(ctx context.Context, a *app, cfg *serveConfig) (err error) {
	log := slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: cfg.level}))
	if err := os.MkdirAll(cfg.data, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	bm, err := metrics.NewBackend(reg)
	if err != nil {
		return err
	}

	// The blob store: fs or S3, counted by the metrics decorator per real
	// request, with retries around that.
	var (
		blobs     backend.Store
		kind      = "fs"
		blobsDesc string
		closeFS   func() error
	)
	if cfg.s3Endpoint != "" {
		st, err := s3.New(ctx, s3.Options{
			Endpoint: cfg.s3Endpoint, Bucket: cfg.s3Bucket, Region: cfg.s3Region, Prefix: cfg.s3Prefix,
			AccessKey: cfg.s3AccessKey, SecretKey: cfg.s3SecretKey, SessionToken: cfg.s3SessionToken,
			Secure: !cfg.s3Insecure && !strings.HasPrefix(cfg.s3Endpoint, "http://"),
		})
		if err != nil {
			return fmt.Errorf("blob store: %w", err)
		}
		blobs, kind = st, "s3"
		blobsDesc = "s3://" + cfg.s3Bucket + "/" + strings.TrimSuffix(cfg.s3Prefix, "/") + " at " + cfg.s3Endpoint
	} else {
		dir := filepath.Join(cfg.data, blobsSubdir)
		st, err := fs.New(dir)
		if err != nil {
			return fmt.Errorf("blob store: %w", err)
		}
		blobs, blobsDesc, closeFS = st, dir, st.Close
	}
	defer func() {
		if closeFS != nil {
			if cerr := closeFS(); cerr != nil && err == nil {
				err = fmt.Errorf("close blob store: %w", cerr)
			}
		}
	}()
	blobs = retry.New(bm.Wrap(blobs), retry.Options{OnRetry: func(e retry.Event) {
		bm.OnRetry(e.Op)
		log.Debug("retrying blob store request", "op", e.Op, "key", e.Key, "attempt", e.Attempt, "err", e.Err)
	}})

	indexDir := filepath.Join(cfg.data, indexSubdir)
	c, err := cache.Open(ctx, cache.Options{Dir: indexDir, Backend: blobs, Concurrency: cfg.concurrency, Logger: log})
	if err != nil {
		return err
	}
	// Closed after the server has stopped: no handler uses it any more.
	defer func() {
		if cerr := c.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close cache: %w", cerr)
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
