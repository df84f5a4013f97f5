package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/auth"
	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/cmd/internal/sizeflag"
	"github.com/cairnbuild/cairn/cmd/internal/storage"
	"github.com/cairnbuild/cairn/internal/tlsfiles"
	"github.com/cairnbuild/cairn/metrics"
	"github.com/cairnbuild/cairn/registry"
	"github.com/cairnbuild/cairn/server"
	"github.com/cairnbuild/cairn/transfer"
)

// serveConfig is everything `cairn serve` is told, from flags and their
// environment twins, validated by check.
type serveConfig struct {
	storage          storage.Config
	log              logFlags
	listen           string
	metricsListen    string
	registryListen   string
	maxManifest      string // parsed into maxManifestBytes by check
	maxManifestBytes int64

	gracePeriod       time.Duration
	maxRecvMsgSize    string // parsed into maxRecvBytes by check
	maxRecvBytes      int
	rpcTimeout        time.Duration
	streamIdleTimeout time.Duration
	sendIdleTimeout   time.Duration
	maxTransfers      int
	maxPerClient      int // 0: transfer.DefaultShare(maxTransfers)

	tlsCert, tlsKey   string
	tlsClientCA       string
	tlsReloadInterval time.Duration
	authFile          string
	authRealm         string
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
127.0.0.1:7070. It also serves the OCI Distribution (registry) API on
--registry-listen, 127.0.0.1:5000 by default, over the same store: point
BuildKit, buildx, docker, crane or skopeo at it. --s3-endpoint and --s3-bucket move the blobs to an
S3-compatible store (AWS S3, MinIO, Ceph RGW); the index stays under --data.

Without --s3-access-key the S3 credentials come from
AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials or
MINIO_ROOT_USER/MINIO_ROOT_PASSWORD.

With --tls-cert and --tls-key both ports serve TLS (the metrics port stays
plain HTTP), and the files are read again when they change; with
--tls-client-ca as well, every client must present a certificate signed by
one of its CAs. Serving without TLS on an address other than loopback logs
a warning.

On SIGTERM or SIGINT the server stops accepting calls, lets the calls in
flight finish for --grace-period, then cancels the rest; a push cut off
this way commits nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cfg.check(); err != nil {
				return err
			}
			return runServe(cmd.Context(), a, &cfg)
		},
	}
	f := cmd.Flags()
	cfg.storage.AddFlags(f)
	cfg.storage.AddCompressedFlags(f)
	cfg.storage.AddScrubFlags(f)
	cfg.storage.AddGCFlags(f)
	cfg.log.addFlags(f)
	f.StringVar(&cfg.listen, "listen", defaultServer, "gRPC listen address, host:port")
	f.StringVar(&cfg.registryListen, "registry-listen", defaultRegistry, "OCI Distribution (registry) API listen address, host:port (empty: no registry)")
	f.StringVar(&cfg.maxManifest, "max-manifest-size", "16MiB", "largest manifest the registry accepts")
	f.IntVar(&cfg.storage.MaxUploads, "max-uploads", cache.DefaultMaxUploads, "registry upload sessions open at once; more get 429")
	f.DurationVar(&cfg.storage.UploadIdleTimeout, "upload-idle-timeout", cache.DefaultUploadIdleTimeout, "abort a registry upload session whose client sent nothing for this long")
	f.StringVar(&cfg.metricsListen, "metrics-listen", "", "Prometheus /metrics listen address, host:port (empty: no metrics endpoint)")
	f.DurationVar(&cfg.gracePeriod, "grace-period", 30*time.Second, "on shutdown, how long calls in flight may take to finish")
	f.StringVar(&cfg.maxRecvMsgSize, "max-recv-msg-size", "8MiB", "largest gRPC message accepted; at least 4100KiB, to fit the largest chunk (4MiB) and 4KiB around it")
	f.DurationVar(&cfg.rpcTimeout, "rpc-timeout", server.DefaultUnaryTimeout, "longest a unary call may take, whatever the client's deadline")
	f.DurationVar(&cfg.streamIdleTimeout, "stream-idle-timeout", server.DefaultStreamIdleTimeout, "fail an upload whose client sends nothing for this long")
	f.DurationVar(&cfg.sendIdleTimeout, "send-idle-timeout", server.DefaultSendIdleTimeout, "fail a download (gRPC or registry) whose client reads nothing for this long, freeing its transfer slot")
	f.IntVar(&cfg.maxTransfers, "max-transfers", server.DefaultMaxTransfers, "pushes, pulls, chunk transfers and registry blob downloads served at once; more wait (bounds memory)")
	f.IntVar(&cfg.maxPerClient, "max-transfers-per-client", 0, "transfers one client (its token's name with --auth-file, else its IP address: all of this host's loopback clients are one) may run at once; more wait (0: half of --max-transfers)")
	f.StringVar(&cfg.tlsCert, "tls-cert", "", "PEM file of the server's certificate chain: serve TLS on the gRPC and registry ports (with --tls-key; reloaded when it changes)")
	f.StringVar(&cfg.tlsKey, "tls-key", "", "PEM file of the private key of --tls-cert (reloaded when it changes)")
	f.StringVar(&cfg.tlsClientCA, "tls-client-ca", "", "PEM file of the CA(s) whose client certificates are accepted: every client must present one (mTLS; needs --tls-cert; reloaded when it changes)")
	f.DurationVar(&cfg.tlsReloadInterval, "tls-reload-interval", tlsfiles.DefaultInterval, "how often, at most, the --tls-* files are checked for changes (on a new connection)")
	f.StringVar(&cfg.authFile, "auth-file", "", "YAML credentials file: tokens (stored as SHA-256) with scopes over namespaces, and what anonymous clients may do; reloaded when it changes (empty: everyone may do everything; see cairn token new)")
	f.StringVar(&cfg.authRealm, "auth-realm", "", "the registry's base URL as clients reach it (https://host:port), for the token endpoint its 401 challenges name (empty: each request's own scheme and host)")
	return cmd
}

// check validates the configuration and derives the parsed fields.
func (c *serveConfig) check() error {
	if err := c.storage.Check(); err != nil {
		return err
	}
	if err := c.log.check(); err != nil {
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
	if c.registryListen != "" {
		if _, _, err := net.SplitHostPort(c.registryListen); err != nil {
			return fmt.Errorf("--registry-listen %q: want host:port: %v", c.registryListen, err)
		}
		for _, o := range []struct{ name, addr string }{{"--listen", c.listen}, {"--metrics-listen", c.metricsListen}} {
			if _, port, _ := net.SplitHostPort(o.addr); o.addr == c.registryListen && port != "0" {
				return fmt.Errorf("--registry-listen and %s are both %s", o.name, o.addr)
			}
		}
	}
	mm, err := sizeflag.Parse("--max-manifest-size", c.maxManifest, "16MiB", 4<<10, cache.MaxManifestSize)
	if err != nil {
		return err
	}
	c.maxManifestBytes = mm
	if c.storage.MaxUploads < 1 || c.storage.UploadIdleTimeout <= 0 {
		return errors.New("--max-uploads and --upload-idle-timeout must be positive")
	}
	if c.gracePeriod < 0 {
		return fmt.Errorf("--grace-period %v: negative", c.gracePeriod)
	}
	n, err := sizeflag.Parse("--max-recv-msg-size", c.maxRecvMsgSize, "8MiB", cache.MaxChunkSize+4<<10, 1<<30)
	if err != nil {
		return fmt.Errorf("%w (a message holds a chunk of up to %s and 4KiB around it)", err, sizeflag.Format(cache.MaxChunkSize))
	}
	c.maxRecvBytes = int(n)
	if c.rpcTimeout <= 0 || c.streamIdleTimeout <= 0 || c.sendIdleTimeout <= 0 {
		return errors.New("--rpc-timeout, --stream-idle-timeout and --send-idle-timeout must be positive")
	}
	if c.maxTransfers < 1 {
		return fmt.Errorf("--max-transfers %d: want at least 1", c.maxTransfers)
	}
	if c.maxPerClient < 0 || c.maxPerClient > c.maxTransfers {
		return fmt.Errorf("--max-transfers-per-client %d: want 1 to --max-transfers (%d), or 0 for half of it", c.maxPerClient, c.maxTransfers)
	}
	switch {
	case c.tlsCert != "" && c.tlsKey == "":
		return errors.New("--tls-cert needs --tls-key, the certificate's private key")
	case c.tlsKey != "" && c.tlsCert == "":
		return errors.New("--tls-key needs --tls-cert, the certificate it is the key of")
	case c.tlsClientCA != "" && c.tlsCert == "":
		return errors.New("--tls-client-ca needs --tls-cert and --tls-key: client certificates are checked only over TLS")
	}
	if c.tlsReloadInterval <= 0 {
		return fmt.Errorf("--tls-reload-interval %v: want a positive duration", c.tlsReloadInterval)
	}
	return nil
}

// insecureExposure returns the warning for serving on addr (a listener's
// host:port) with or without TLS and client authentication, or "" when
// there is nothing to warn about: a loopback address, or TLS with
// authentication (client certificates or a credentials file).
func insecureExposure(addr string, tls bool, auth bool) string {
	if (tls && auth) || isLoopback(addr) {
		return ""
	}
	switch {
	case !tls && !auth:
		return fmt.Sprintf("serving %s, not a loopback address, without TLS or authentication: anyone who can reach it can read, write and delete every layer, image and step record, and can read and alter what others send (serve with --tls-cert and --tls-key, and --auth-file or --tls-client-ca, or listen on 127.0.0.1)", addr)
	case !auth:
		return fmt.Sprintf("serving %s, not a loopback address, without authentication: TLS protects the traffic, but anyone who can reach it can read, write and delete every layer, image and step record (add --auth-file for tokens, or --tls-client-ca to require client certificates)", addr)
	default:
		return fmt.Sprintf("serving %s, not a loopback address, without TLS: credentials and data cross the network in clear text (serve with --tls-cert and --tls-key)", addr)
	}
}

// isLoopback says whether host:port addr can be reached only from this
// host: a loopback IP address or "localhost". An empty host, an
// unspecified address (0.0.0.0, ::) and any other name are not.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// runServe runs the server until ctx ends (a signal) or serving fails.
func runServe(ctx context.Context, a *app, cfg *serveConfig) (err error) {
	log := cfg.log.logger(a.stderr)
	var tlsFiles *tlsfiles.Server
	tlsDesc := "off"
	if cfg.tlsCert != "" {
		// The first load must succeed, before the store opens: there is no
		// old pair to keep.
		tlsFiles, err = tlsfiles.NewServer(tlsfiles.Options{CertFile: cfg.tlsCert, KeyFile: cfg.tlsKey, ClientCAFile: cfg.tlsClientCA,
			Interval: cfg.tlsReloadInterval, Logger: log})
		if err != nil {
			return fmt.Errorf("--tls-cert/--tls-key/--tls-client-ca: %w", err)
		}
		tlsDesc = "on"
		if tlsFiles.ClientAuth() {
			tlsDesc = "on, client certificates required"
		}
	}
	// Authentication: client certificates, or a credentials file.
	authOn := tlsFiles != nil && tlsFiles.ClientAuth()
	var authn *auth.Authenticator
	if cfg.authFile != "" {
		// The first load must succeed: there is no old policy to keep.
		if authn, err = auth.Open(cfg.authFile, auth.Options{Logger: log}); err != nil {
			return fmt.Errorf("--auth-file: %w", err)
		}
		defer authn.Close()
		authOn = true
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	bm, err := metrics.NewBackend(reg)
	if err != nil {
		return err
	}

	st, err := cfg.storage.Open(ctx, log, bm)
	if err != nil {
		return err
	}
	c := st.Cache
	// Closed after the server has stopped: no handler uses it any more.
	defer func() {
		if cerr := st.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	reg.MustRegister(metrics.NewCacheCollector(c.Stats, 0, log), metrics.NewRebuildCollector(c.Rebuilds), metrics.NewGCCollector(c.GCStats),
		metrics.NewDivergenceCollector(c.Divergences))

	// One transfer bound for both fronts: gRPC transfers and registry blob
	// downloads take their slots from it.
	transfers := transfer.New(cfg.maxTransfers, cfg.maxPerClient)
	// The background collection's settings are also what a cairn gc
	// leaves unset.
	gc := cfg.storage.GCOptions()
	gcDefaults := server.GCDefaults{UntaggedMaxAge: gc.UntaggedMaxAge, MaxSize: gc.MaxSize, KeepTags: gc.KeepTags,
		CompactAge: gc.CompactAge, CompactPace: gc.CompactPace}
	var grpcTLS *tls.Config
	if tlsFiles != nil {
		grpcTLS = tlsFiles.Config()
	}
	srv, err := server.New(c, server.Options{
		TLS:               grpcTLS,
		MaxRecvMsgSize:    cfg.maxRecvBytes,
		UnaryTimeout:      cfg.rpcTimeout,
		StreamIdleTimeout: cfg.streamIdleTimeout,
		SendIdleTimeout:   cfg.sendIdleTimeout,
		Transfers:         transfers,
		Auth:              authn,
		GCDefaults:        gcDefaults,
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
	registryDesc := "off"
	var regSrv *http.Server
	if cfg.registryListen != "" {
		rlis, err := lc.Listen(ctx, "tcp", cfg.registryListen)
		if err != nil {
			lis.Close()
			if httpSrv != nil {
				httpSrv.Close()
			}
			return fmt.Errorf("registry: %w", err)
		}
		rm, err := registry.NewMetrics(reg)
		if err != nil {
			return err
		}
		ro := registry.Options{MaxManifestSize: cfg.maxManifestBytes, Logger: log,
			SendIdleTimeout: cfg.sendIdleTimeout, Transfers: transfers}
		if authn != nil {
			if ro.Auth, err = auth.NewHTTP(authn, auth.HTTPOptions{Realm: cfg.authRealm, Logger: log}); err != nil {
				return fmt.Errorf("--auth-realm: %w", err)
			}
		}
		h := registry.New(c, ro).WithMetrics(rm)
		// No WriteTimeout: a blob download may take long; idle and header
		// timeouts bound a client that stops talking.
		regSrv = &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		registryDesc = "http://" + rlis.Addr().String() + "/v2/"
		serveReg := regSrv.Serve
		if tlsFiles != nil {
			// HTTP/1.1 only: Go's HTTP/2 server hands a response to the
			// connection in 4 KiB pieces, and a blob pull over it ran at
			// about half the plain rate (bench/RESULTS.md, issue 16);
			// over HTTP/1.1 TLS costs far less. Registry clients open a
			// connection per parallel download either way.
			regSrv.TLSConfig = tlsFiles.Config("http/1.1")
			regSrv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
			registryDesc = "https://" + rlis.Addr().String() + "/v2/"
			serveReg = func(l net.Listener) error { return regSrv.ServeTLS(l, "", "") }
		}
		if w := insecureExposure(rlis.Addr().String(), tlsFiles != nil, authOn); w != "" {
			log.Warn("the registry port is exposed: "+w, "listen", rlis.Addr().String())
		}
		go func() {
			if err := serveReg(rlis); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("registry: %w", err)
			}
		}()
	}
	go func() {
		if err := srv.Serve(lis); err != nil {
			errc <- fmt.Errorf("serve: %w", err)
		}
	}()
	if w := insecureExposure(lis.Addr().String(), tlsFiles != nil, authOn); w != "" {
		log.Warn("the gRPC port is exposed: "+w, "listen", lis.Addr().String())
	}
	authDesc := "off (everyone may do everything)"
	if authn != nil {
		authDesc = cfg.authFile
	}
	log.Info("cairn serving", "listen", lis.Addr().String(), "tls", tlsDesc, "auth", authDesc, "backend", st.Kind, "blobs", st.Blobs, "index", st.IndexDir,
		"registry", registryDesc, "metrics", metricsDesc, "max_recv_msg_size", humanize.IBytes(uint64(cfg.maxRecvBytes)),
		"grace_period", cfg.gracePeriod, "max_transfers", transfers.Max(), "max_transfers_per_client", transfers.PerClient(),
		"version", serveVersion())

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "grace_period", cfg.gracePeriod)
	case serveErr = <-errc:
		log.Error("shutting down after an error", "err", serveErr)
	}
	grace, cancel := context.WithTimeout(context.Background(), cfg.gracePeriod)
	defer cancel()
	var wg sync.WaitGroup
	if regSrv != nil {
		// In-flight registry requests finish within the grace period; the
		// cache aborts upload sessions when it closes.
		wg.Go(func() {
			if err := regSrv.Shutdown(grace); err != nil {
				regSrv.Close()
			}
		})
	}
	srv.Shutdown(grace)
	wg.Wait()
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
