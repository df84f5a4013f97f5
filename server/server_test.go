package server

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/cairnbuild/cairn/cache"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

func TestHealthAndReflection(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	for _, svc := range []string{"", "cairn.v1.CacheService", "cairn.v1.LayerService", "cairn.v1.RegistryService"} {
		resp, err := e.health.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health of %q: %v, %v", svc, resp, err)
		}
	}

	stream, err := reflectionpb.NewServerReflectionClient(e.conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"cairn.v1.CacheService", "cairn.v1.LayerService", "cairn.v1.RegistryService", "grpc.health.v1.Health"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("reflection lists %v, missing %s", names, want)
		}
	}
	stream.CloseSend()
}

func TestNewRejectsTinyMessageLimit(t *testing.T) {
	if _, err := New(nil, Options{}); err == nil {
		t.Error("New(nil cache) succeeded")
	}
	e := newEnv(t, Options{})
	if _, err := New(e.cache, Options{MaxRecvMsgSize: 1 << 20}); err == nil {
		t.Error("New with a 1 MiB message limit succeeded; chunks of 4 MiB could not be put")
	}
}

func TestStreamIdleTimeout(t *testing.T) {
	e := newEnv(t, Options{StreamIdleTimeout: 150 * time.Millisecond})
	for _, sendHeader := range []bool{false, true} {
		stream, err := e.layers.PushLayer(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if sendHeader {
			stream.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Header{Header: &cairnv1.PushLayerHeader{}}})
			stream.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Data{Data: []byte("some")}})
		}
		// The client stalls: it neither sends nor closes, and waits for the
		// server to end the call.
		err = stream.RecvMsg(&cairnv1.PushLayerResponse{})
		wantStatus(t, err, codes.DeadlineExceeded, cairnv1.ReasonStreamIdle, "")
	}
	if n, _ := e.cache.Stats(context.Background()); n.Layers != 0 {
		t.Errorf("%d layers after stalled pushes, want 0", n.Layers)
	}
}

func TestUnaryTimeoutInterceptor(t *testing.T) {
	ic := timeoutInterceptor(50 * time.Millisecond)
	start := time.Now()
	_, err := ic(context.Background(), nil, &grpc.UnaryServerInfo{}, func(ctx context.Context, _ any) (any, error) {
		<-ctx.Done()
		return nil, toStatus(ctx.Err())
	})
	wantStatus(t, err, codes.DeadlineExceeded, cairnv1.ReasonDeadlineExceeded, "")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
}

// TestShutdown checks SIGTERM's path: a push that finishes within the grace
// period commits; one still open when it ends fails and commits nothing.
func TestShutdown(t *testing.T) {
	logs := newLogRecorder()
	e := newEnv(t, Options{Logger: slog.New(logs)})
	ctx := context.Background()
	done := randomData(1, 2<<20)
	stalled := randomData(2, 2<<20)

	open := func(data []byte) cairnv1.LayerService_PushLayerClient {
		s, err := e.layers.PushLayer(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Header{Header: &cairnv1.PushLayerHeader{ExpectedDigest: digest.FromBytes(data).String()}}}); err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Data{Data: data[:1<<20]}}); err != nil {
			t.Fatal(err)
		}
		return s
	}
	finishing, hanging := open(done), open(stalled)

	grace, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	stopped := make(chan struct{})
	go func() { e.srv.Shutdown(grace); close(stopped) }()

	// Health says NOT_SERVING and new calls are refused, soon.
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := e.health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("still SERVING during shutdown")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The in-flight push may finish.
	if err := finishing.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Data{Data: done[1<<20:]}}); err != nil {
		t.Fatalf("send during the grace period: %v", err)
	}
	if resp, err := finishing.CloseAndRecv(); err != nil || resp.GetLayer().GetDigest() != digest.FromBytes(done).String() {
		t.Fatalf("push finished during the grace period: %v, %v", resp, err)
	}

	// The stalled one is cut off when the grace period ends.
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the grace period")
	}
	_, err := hanging.CloseAndRecv()
	if err == nil {
		t.Fatal("a push still open at the end of the grace period succeeded")
	}
	if _, err := e.cache.Stat(ctx, digest.FromBytes(stalled)); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("stat of the cut-off push: %v, want not found", err)
	}
	if _, err := e.cache.Stat(ctx, digest.FromBytes(done)); err != nil {
		t.Fatalf("stat of the finished push: %v", err)
	}
	// The cut-off push is logged as the server's doing, and as no failure.
	if rec := logs.wait(t, "/cairn.v1.LayerService/PushLayer"); rec.level != slog.LevelInfo || rec.msg != "cancelled by shutdown" {
		t.Errorf("the cut-off push was logged %v %q (code %s), want Info \"cancelled by shutdown\"", rec.level, rec.msg, rec.code)
	}
	logs.noneAbove(t, slog.LevelError)
}

func TestMetrics(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	data := randomData(5, 300<<10)
	e.pushSimple(t, data)
	if _, _, _, err := e.pull(ctx, &cairnv1.PullLayerRequest{Digest: digest.FromBytes(data).String()}); err != nil {
		t.Fatal(err)
	}
	e.layers.StatLayer(ctx, &cairnv1.StatLayerRequest{Digest: "bad"})
	step := &cairnv1.Step{Instruction: "RUN true"}
	e.steps.LookupStep(ctx, &cairnv1.LookupStepRequest{Step: step})
	e.steps.RecordStep(ctx, &cairnv1.RecordStepRequest{Step: step})
	e.steps.LookupChain(ctx, &cairnv1.LookupChainRequest{Steps: []*cairnv1.Step{step, step}})

	tests := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"cairn_rpc_requests_total", map[string]string{"method": "cairn.v1.LayerService/PushLayer", "code": "OK"}, 1},
		{"cairn_rpc_requests_total", map[string]string{"method": "cairn.v1.LayerService/StatLayer", "code": "InvalidArgument"}, 1},
		{"cairn_rpc_requests_total", map[string]string{"method": "cairn.v1.CacheService/LookupChain", "code": "OK"}, 1},
		{"cairn_step_lookups_total", map[string]string{"result": "miss"}, 2}, // LookupStep, then the chain's second step
		{"cairn_step_lookups_total", map[string]string{"result": "hit"}, 1},
		{"cairn_bytes_received_total", nil, float64(len(data))},
		{"cairn_bytes_sent_total", nil, float64(len(data))},
	}
	for _, tt := range tests {
		if got := metricValue(t, e.reg, tt.name, tt.labels); got != tt.want {
			t.Errorf("%s%v = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
}

// metricValue returns the counter or gauge value of the series with
// exactly labels, or -1 if there is none.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue series
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

// TestLimitsAgree guards the API's published limits against drift from
// the cache's: a client that sizes its requests by cairnv1 must never hit a
// cache limit first.
func TestLimitsAgree(t *testing.T) {
	for _, tt := range []struct {
		name      string
		api, core int
	}{
		{"chunks per request", cairnv1.MaxChunksPerRequest, cache.MaxChunkList},
		{"chain steps", cairnv1.MaxChainSteps, cache.MaxChainSteps},
		{"largest chunk fits a client's receive limit", cairnv1.MinClientRecvMsgBytes - 64<<10, cache.MaxChunkSize},
	} {
		if tt.api != tt.core {
			t.Errorf("%s: API says %d, cache %d", tt.name, tt.api, tt.core)
		}
	}
	if DefaultMaxRecvMsgSize < cache.MaxChunkSize+4<<10 {
		t.Errorf("default receive limit %d cannot carry a %d-byte chunk", DefaultMaxRecvMsgSize, cache.MaxChunkSize)
	}
}

func TestMaxTransfers(t *testing.T) {
	e := newEnv(t, Options{MaxTransfers: 1})
	ctx := context.Background()
	small := randomData(9, 1000)
	e.pushSimple(t, small)

	data := randomData(10, 1<<20)
	push, err := e.layers.PushLayer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	push.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Header{Header: &cairnv1.PushLayerHeader{}}})
	push.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Data{Data: data[:1000]}})
	for deadline := time.Now().Add(5 * time.Second); metricValue(t, e.reg, "cairn_transfers_in_flight", nil) != 1; {
		if time.Now().After(deadline) {
			t.Fatal("the push never took its transfer slot")
		}
		time.Sleep(5 * time.Millisecond)
	}

	// The only slot is taken: a pull waits, until its deadline.
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, _, _, err = e.pull(short, &cairnv1.PullLayerRequest{Digest: digest.FromBytes(small).String()})
	wantStatus(t, err, codes.DeadlineExceeded, "", "")
	// Lookups are not transfers and go through.
	if _, err := e.steps.LookupStep(ctx, &cairnv1.LookupStepRequest{Step: &cairnv1.Step{Instruction: "RUN x"}}); err != nil {
		t.Fatalf("lookup while the transfer slot is taken: %v", err)
	}

	push.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Data{Data: data[1000:]}})
	if _, err := push.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
	if _, got, _, err := e.pull(ctx, &cairnv1.PullLayerRequest{Digest: digest.FromBytes(small).String()}); err != nil || !bytes.Equal(got, small) {
		t.Fatalf("pull after the push freed the slot: %v", err)
	}
}
