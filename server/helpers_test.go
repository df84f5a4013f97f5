package server

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/cache"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// env is one in-process server over bufconn, with a real Badger index in a
// temporary directory and the mem backend.
type env struct {
	cache  *cache.Cache
	srv    *Server
	reg    *prometheus.Registry
	conn   *grpc.ClientConn
	layers cairnv1.LayerServiceClient
	steps  cairnv1.CacheServiceClient
	health healthpb.HealthClient
}

func newEnv(t *testing.T, opts Options) *env {
	t.Helper()
	return newEnvWith(t, opts, nil)
}

// newEnvWith is newEnv with the server's Store made by wrap from the cache
// (nil: the cache itself), to put a fake or a decorator in front of it.
func newEnvWith(t *testing.T, opts Options, wrap func(*cache.Cache) Store) *env {
	t.Helper()
	ctx := context.Background()
	c, err := cache.Open(ctx, cache.Options{Dir: t.TempDir(), Backend: mem.New()})
	if err != nil {
		t.Fatalf("cache.Open: %v", err)
	}
	reg := prometheus.NewRegistry()
	if opts.Registerer == nil {
		opts.Registerer = reg
	}
	var st Store = c
	if wrap != nil {
		st = wrap(c)
	}
	srv, err := New(st, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	lis := bufconn.Listen(1 << 20)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(cairnv1.MinClientRecvMsgBytes)),
	)
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() {
		conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if err := c.Close(); err != nil {
			t.Errorf("cache.Close: %v", err)
		}
	})
	return &env{
		cache: c, srv: srv, reg: reg, conn: conn,
		layers: cairnv1.NewLayerServiceClient(conn),
		steps:  cairnv1.NewCacheServiceClient(conn),
		health: healthpb.NewHealthClient(conn),
	}
}

// randomData returns n bytes from a seeded generator, so failures repeat.
func randomData(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// push uploads data as one layer in messages of msgSize bytes.
func (e *env) push(ctx context.Context, header *cairnv1.PushLayerHeader, data []byte, msgSize int) (*cairnv1.Layer, error) {
	stream, err := e.layers.PushLayer(ctx)
	if err != nil {
		return nil, err
	}
	if header != nil {
		if err := stream.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Header{Header: header}}); err != nil {
			return nil, recvErr(stream, err)
		}
	}
	for len(data) > 0 {
		n := min(msgSize, len(data))
		if err := stream.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Data{Data: data[:n]}}); err != nil {
			return nil, recvErr(stream, err)
		}
		data = data[n:]
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return nil, err
	}
	return resp.GetLayer(), nil
}

// recvErr returns the status of a stream whose Send failed: Send reports
// io.EOF and the real error comes from CloseAndRecv.
func recvErr(stream cairnv1.LayerService_PushLayerClient, err error) error {
	if errors.Is(err, io.EOF) {
		_, err = stream.CloseAndRecv()
	}
	return err
}

// pushSimple pushes data with its digest and size declared.
func (e *env) pushSimple(t *testing.T, data []byte) *cairnv1.Layer {
	t.Helper()
	size := int64(len(data))
	l, err := e.push(context.Background(), &cairnv1.PushLayerHeader{
		ExpectedDigest: digest.FromBytes(data).String(), SizeBytes: &size,
	}, data, 256<<10)
	if err != nil {
		t.Fatalf("push of %d bytes: %v", len(data), err)
	}
	return l
}

// pull reads a layer range back whole.
func (e *env) pull(ctx context.Context, req *cairnv1.PullLayerRequest) (*cairnv1.Layer, []byte, int, error) {
	stream, err := e.layers.PullLayer(ctx, req)
	if err != nil {
		return nil, nil, 0, err
	}
	var (
		layer *cairnv1.Layer
		data  []byte
		msgs  int
	)
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return layer, data, msgs, nil
		}
		if err != nil {
			return nil, nil, msgs, err
		}
		if msgs == 0 {
			layer = resp.GetLayer()
		} else if resp.GetLayer() != nil {
			return nil, nil, msgs, errors.New("layer info in a message after the first")
		}
		if len(resp.GetData()) > cairnv1.MaxDataMessageBytes {
			return nil, nil, msgs, errors.New("data message above MaxDataMessageBytes")
		}
		msgs++
		data = append(data, resp.GetData()...)
	}
}

// wantStatus checks err's code and ErrorInfo reason (reason "" skips the
// detail check); field, if set, must be ErrorInfo.metadata["field"].
func wantStatus(t *testing.T, err error, code codes.Code, reason, field string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("got error %v, want a gRPC status %v", err, code)
	}
	if st.Code() != code {
		t.Fatalf("got code %v (%s), want %v", st.Code(), st.Message(), code)
	}
	if reason == "" {
		return
	}
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			info = i
		}
	}
	if info == nil {
		t.Fatalf("status %v (%s) has no ErrorInfo", st.Code(), st.Message())
	}
	if info.GetDomain() != cairnv1.ErrorDomain || info.GetReason() != reason {
		t.Fatalf("got ErrorInfo %s/%s, want %s/%s (%s)", info.GetDomain(), info.GetReason(), cairnv1.ErrorDomain, reason, st.Message())
	}
	if field != "" && info.GetMetadata()["field"] != field {
		t.Fatalf("got field %q, want %q (%s)", info.GetMetadata()["field"], field, st.Message())
	}
}
