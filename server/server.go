package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/cairnbuild/cairn/auth"
	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/metrics"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
	"github.com/cairnbuild/cairn/transfer"
)

// Defaults for Options fields left zero.
const (
	// DefaultMaxRecvMsgSize fits the largest chunk (cache.MaxChunkSize,
	// 4 MiB) with room to spare, and a CommitLayer of
	// cairnv1.MaxChunksPerRequest chunk references (about 5 MiB).
	DefaultMaxRecvMsgSize = cairnv1.DefaultMaxRecvMsgBytes
	// DefaultUnaryTimeout caps every unary call, whatever deadline the
	// client sets (or none): long enough for a CommitLayer that verifies a
	// multi-GiB layer against a slow blob store.
	DefaultUnaryTimeout = 5 * time.Minute
	// DefaultStreamIdleTimeout fails a client stream (PushLayer, PutChunks)
	// whose client sends nothing for this long, so a stalled builder does
	// not hold a push open forever.
	DefaultStreamIdleTimeout = time.Minute
	// DefaultSendIdleTimeout fails a download (PullLayer, GetChunks) whose
	// client takes nothing for this long, so that a reader that stopped
	// reading does not hold a transfer slot forever.
	DefaultSendIdleTimeout = time.Minute
	// DefaultMaxConcurrentStreams bounds the calls in flight on one
	// connection; with the per-call buffers it bounds memory per client.
	DefaultMaxConcurrentStreams = 128
	// DefaultMaxTransfers bounds the data-carrying calls (pushes, pulls,
	// chunk uploads and downloads, commits) the server runs at once, over
	// all connections. Each holds up to about 24 MiB (a message, the
	// cache's chunk buffers), so 32 of them stay under 1 GiB.
	DefaultMaxTransfers = 32
)

// keepalive settings: clients may ping every 10 s at most (faster pings are
// answered with GOAWAY); the server pings a connection idle for 1 minute and
// drops it if the ping is not answered in 20 s, which ends the calls of a
// client that vanished mid-push.
const (
	keepaliveMinTime = 10 * time.Second
	keepaliveTime    = time.Minute
	keepaliveTimeout = 20 * time.Second
)

// Options configure a Server. Zero fields take the defaults above.
type Options struct {
	// MaxRecvMsgSize bounds one incoming message in bytes; a larger one
	// fails with ResourceExhausted. It must be at least cache.MaxChunkSize
	// plus framing, or PutChunks of large chunks cannot work.
	MaxRecvMsgSize int
	// UnaryTimeout caps the duration of every unary call but VerifyStore
	// and CollectGarbage.
	UnaryTimeout time.Duration
	// StreamIdleTimeout fails a client stream whose client sends nothing for
	// this long.
	StreamIdleTimeout time.Duration
	// SendIdleTimeout fails a server stream (a download) whose client takes
	// nothing for this long: a message the server cannot hand to the
	// transport (the client stopped reading and flow control is full) for
	// that long cancels the call (DeadlineExceeded, ReasonStreamIdle),
	// which frees its transfer slot, and the call is logged as a stalled
	// client.
	SendIdleTimeout time.Duration
	// MaxConcurrentStreams bounds the calls in flight per connection.
	MaxConcurrentStreams uint32
	// MaxTransfers bounds the data-carrying calls running at once over all
	// connections; more wait for a slot (within their deadline). With
	// MaxRecvMsgSize and the cache's Concurrency it bounds the server's
	// memory.
	MaxTransfers int
	// MaxTransfersPerClient bounds the transfer slots one client holds at
	// once, so that one client cannot take them all; its further calls wait
	// for one of its own slots. Zero means transfer.DefaultShare (half of
	// MaxTransfers, at least 1); MaxTransfers or more means no per-client
	// bound. A client is the peer's IP address: until the server
	// authenticates clients, every process of one host (all loopback
	// clients among them) and every client behind one proxy count as one
	// client, so stalled readers on one host are freed by SendIdleTimeout,
	// not by this share.
	MaxTransfersPerClient int
	// Transfers, if set, is the transfer limiter to use instead of one made
	// from MaxTransfers and MaxTransfersPerClient (which are then ignored),
	// so that several fronts (cmd/cairn gives the registry the same one)
	// share one bound.
	Transfers *transfer.Limiter
	// Registerer receives the RPC metrics (see metrics.go) and the step
	// hit and miss counts (New decorates the Store's StepCache with
	// metrics.Steps); nil disables them.
	Registerer prometheus.Registerer
	// GCDefaults are the collection settings CollectGarbage applies where
	// a request leaves them unset (the zero value: the cache's defaults).
	GCDefaults GCDefaults
	// Auth decides who may call what (package auth: a credentials file of
	// tokens and scopes); nil lets every caller do everything, as without
	// a credentials file. Every call goes through its interceptor either
	// way, so the handlers' namespace checks hold in one code path.
	Auth *auth.Authenticator
	// TLS, if set, serves gRPC over TLS with it (grpc.Creds of
	// credentials.NewTLS, which adds "h2" to its ALPN protocols); nil
	// serves plaintext (h2c).
	TLS *tls.Config
	// Logger receives failed calls that point at the server (Internal,
	// DataLoss, Unavailable: Error and Warn), calls the client cancelled
	// (Info, "client cancelled"), calls ended by an idle timeout (Info,
	// "client stalled") and recovered panics; nil discards.
	Logger *slog.Logger
}

// Server serves one Store (a *cache.Cache) over gRPC. Make it with New, run
// it with Serve and end it with Shutdown. It does not own the store: close
// it after Shutdown returns.
type Server struct {
	grpc   *grpc.Server
	health *health.Server
	log    *slog.Logger
	calls  *callLogger
}

// New returns a Server for st: the cairn.v1 CacheService, LayerService and
// RegistryService, grpc.health.v1 (serving until Shutdown) and server
// reflection, with the limits and interceptors opts ask for.
func New(st Store, opts Options) (*Server, error) {
	if st == nil {
		return nil, errors.New("server: no store")
	}
	if opts.MaxRecvMsgSize == 0 {
		opts.MaxRecvMsgSize = DefaultMaxRecvMsgSize
	}
	if opts.MaxRecvMsgSize < cache.MaxChunkSize+4<<10 {
		return nil, fmt.Errorf("server: max receive message size %d is below %d (the largest chunk and framing)",
			opts.MaxRecvMsgSize, cache.MaxChunkSize+4<<10)
	}
	if opts.UnaryTimeout <= 0 {
		opts.UnaryTimeout = DefaultUnaryTimeout
	}
	if opts.StreamIdleTimeout <= 0 {
		opts.StreamIdleTimeout = DefaultStreamIdleTimeout
	}
	if opts.MaxConcurrentStreams == 0 {
		opts.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if opts.SendIdleTimeout <= 0 {
		opts.SendIdleTimeout = DefaultSendIdleTimeout
	}
	if opts.MaxTransfers <= 0 {
		opts.MaxTransfers = DefaultMaxTransfers
	}
	if opts.Transfers == nil {
		opts.Transfers = transfer.New(opts.MaxTransfers, opts.MaxTransfersPerClient)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newRPCMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	var steps StepCache = st
	if opts.Registerer != nil {
		sm, err := metrics.NewSteps(opts.Registerer)
		if err != nil {
			return nil, fmt.Errorf("server: metrics: %w", err)
		}
		steps = sm.Wrap(st)
	}

	unary := []grpc.UnaryServerInterceptor{}
	stream := []grpc.StreamServerInterceptor{}
	if m != nil {
		unary = append(unary, m.unary)
		stream = append(stream, m.stream)
	}
	l := &callLogger{log: log}
	// Audit lines only where there is someone to name.
	authn, auditLog := opts.Auth, log
	if authn == nil {
		authn, auditLog = auth.AllowAll(), nil
	}
	// Auth after the call logger, so that refused calls are logged too.
	unary = append(unary, l.unary, auth.UnaryServerInterceptor(authn, authTable, auditLog), timeoutInterceptor(opts.UnaryTimeout))
	stream = append(stream, l.stream, auth.StreamServerInterceptor(authn, authTable, auditLog))

	gs := grpc.NewServer(
		grpc.MaxRecvMsgSize(opts.MaxRecvMsgSize),
		grpc.MaxConcurrentStreams(opts.MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             keepaliveMinTime,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: keepaliveTime, Timeout: keepaliveTimeout}),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		// Stop (the end of the grace period) waits for the handlers to
		// return, so the cache is not closed under a push cleaning up.
		grpc.WaitForHandlers(true),
		transportCreds(opts.TLS),
	)
	cairnv1.RegisterCacheServiceServer(gs, &cacheService{steps: steps, admin: st, log: auditLog})
	cairnv1.RegisterLayerServiceServer(gs, &layerService{layers: st, chunks: st, stats: st, verifier: st, collector: st, gcDefaults: opts.GCDefaults, m: m,
		idle: opts.StreamIdleTimeout, sendIdle: opts.SendIdleTimeout, transfers: opts.Transfers, walks: make(chan struct{}, 1),
		verifies: make(chan struct{}, 1)})
	cairnv1.RegisterRegistryServiceServer(gs, &registryService{images: st, log: auditLog})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	for _, name := range []string{"", cairnv1.CacheService_ServiceDesc.ServiceName, cairnv1.LayerService_ServiceDesc.ServiceName,
		cairnv1.RegistryService_ServiceDesc.ServiceName} {
		hs.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	reflection.Register(gs)
	return &Server{grpc: gs, health: hs, log: log, calls: l}, nil
}

// Serve accepts connections on lis until Shutdown; it returns nil after a
// Shutdown and the listener's error otherwise.
func (s *Server) Serve(lis net.Listener) error {
	err := s.grpc.Serve(lis)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// Shutdown stops the server: health turns NOT_SERVING, no new calls are
// accepted, and calls in flight may finish until ctx is done; then the rest
// are cancelled. A push cancelled this way commits nothing (the cache
// commits a layer only once all of it is stored). Shutdown returns when
// every handler has returned, so the cache can be closed after it.
func (s *Server) Shutdown(ctx context.Context) {
	s.health.Shutdown()
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Warn("grace period over, cancelling the calls still in flight")
		s.calls.stopping.Store(true)
		s.grpc.Stop()
		<-done
	}
}

// transportCreds is the server option for TLS with cfg, or none for nil.
func transportCreds(cfg *tls.Config) grpc.ServerOption {
	if cfg == nil {
		return grpc.EmptyServerOption{}
	}
	return grpc.Creds(credentials.NewTLS(cfg))
}

// GRPCServer returns the underlying grpc.Server, for tests and for
// registering more services before Serve.
func (s *Server) GRPCServer() *grpc.Server { return s.grpc }

// timeoutInterceptor caps a unary call's deadline at d.
func timeoutInterceptor(d time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if info != nil && (info.FullMethod == cairnv1.LayerService_VerifyStore_FullMethodName ||
			info.FullMethod == cairnv1.LayerService_CollectGarbage_FullMethodName) {
			// They walk the whole store: on a large one, hours. The
			// client's deadline (or cancel) still ends them.
			return handler(ctx, req)
		}
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return handler(ctx, req)
	}
}

// callLogger turns a handler's panic into an Internal error and logs the
// calls that failed with a code pointing at the server, and those the
// client cancelled.
type callLogger struct {
	log *slog.Logger
	// stopping is set when Shutdown cancels the calls still in flight:
	// they are cancelled by the server, not by their clients.
	stopping atomic.Bool
}

func (l *callLogger) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = l.panicked(info.FullMethod, p)
		}
		l.done(ctx, info.FullMethod, err)
	}()
	return handler(ctx, req)
}

func (l *callLogger) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = l.panicked(info.FullMethod, p)
		}
		l.done(ss.Context(), info.FullMethod, err)
	}()
	return handler(srv, ss)
}

func (l *callLogger) panicked(method string, p any) error {
	l.log.Error("panic in handler", "method", method, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	return status.Error(codes.Internal, "internal error")
}

// done logs a finished call. ctx is the call's own context: gRPC cancels it
// when the client cancels the call or goes away, or when Shutdown's grace
// period ends. A call that failed then is logged as cancelled, at Info,
// whatever its error says: a push cut off mid-stream fails in the store
// with whatever broke first (a pipe, a truncated stream), a pull's next
// Send with a closing transport (Unavailable), and neither is a server
// failure. Only DataLoss is still an error then: stored data that failed
// verification is worth a look whoever left.
func (l *callLogger) done(ctx context.Context, method string, err error) {
	code := status.Code(err)
	if err != nil && code != codes.DataLoss && errors.Is(ctx.Err(), context.Canceled) {
		msg := "client cancelled"
		if l.stopping.Load() {
			msg = "cancelled by shutdown"
		}
		l.log.Info(msg, "method", method, "code", code.String(), "err", err)
		return
	}
	if code == codes.DeadlineExceeded && statusReason(err) == cairnv1.ReasonStreamIdle {
		// The client stopped sending (an upload) or reading (a download):
		// its trouble, not the server's; logged so that an operator can
		// tell who holds transfers up.
		attrs := []any{"method", method, "err", err}
		if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
			attrs = append(attrs, "peer", p.Addr.String())
		}
		l.log.Info("client stalled", attrs...)
		return
	}
	switch code {
	case codes.Internal, codes.DataLoss, codes.Unknown:
		l.log.Error("call failed", "method", method, "code", code.String(), "err", err)
	case codes.Unavailable:
		l.log.Warn("call failed", "method", method, "code", code.String(), "err", err)
	}
}
