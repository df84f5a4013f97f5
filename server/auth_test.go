package server

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/cairnbuild/cairn/auth"
	"github.com/cairnbuild/cairn/auth/authtest"
	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/cache"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
	"github.com/opencontainers/go-digest"
)

// The auth table names every method the server serves, and nothing else:
// a new method fails this test until its rule is decided.
func TestAuthTableCoversEveryMethod(t *testing.T) {
	e := newEnv(t, Options{})
	if err := auth.CheckServer(authTable, e.srv.GRPCServer()); err != nil {
		t.Fatal(err)
	}
}

// outcome is what a call may come to under auth: allowed (any other
// answer: the request itself may be a miss or bad), refused for want of
// credentials, or refused for want of a scope.
type outcome int

const (
	allowed outcome = iota
	unauthenticated
	denied
)

func (o outcome) String() string {
	return [...]string{"allowed", "UNAUTHENTICATED", "PERMISSION_DENIED"}[o]
}

func outcomeOf(err error) outcome {
	switch status.Code(err) {
	case codes.Unauthenticated:
		return unauthenticated
	case codes.PermissionDenied:
		return denied
	}
	return allowed
}

// TestAuthMatrix calls every method of the API as four callers and checks
// each outcome: anonymous (the file gives anonymous clients nothing), a
// reader of main, a pull request's token (reads main and pr/1, writes
// pr/1) and an admin. Namespaced requests name main (or the repository
// cache/app, which the reader may read).
func TestAuthMatrix(t *testing.T) {
	a, tokens := authtest.New(t, "", map[string]string{
		"reader": `[{actions: [read], namespaces: [main, cache/app]}]`,
		"pr":     `[{actions: [read], namespaces: [main, pr/1]}, {actions: [write], namespaces: [pr/1]}]`,
		"admin":  `[{actions: [read, write, delete, admin], namespaces: ["*"]}]`,
	})
	addr := serveOnLoopback(t, Options{Auth: a})
	ctx := context.Background()
	d := digest.FromString("x").String()
	step := &cairnv1.Step{Instruction: "RUN true"}

	type call func(conn *grpc.ClientConn) error
	layers := func(c *grpc.ClientConn) cairnv1.LayerServiceClient { return cairnv1.NewLayerServiceClient(c) }
	steps := func(c *grpc.ClientConn) cairnv1.CacheServiceClient { return cairnv1.NewCacheServiceClient(c) }
	images := func(c *grpc.ClientConn) cairnv1.RegistryServiceClient { return cairnv1.NewRegistryServiceClient(c) }
	// want: anonymous, reader, pr, admin.
	matrix := []struct {
		method string
		call   call
		want   [4]outcome
	}{
		{"CacheService/LookupStep", func(c *grpc.ClientConn) error {
			_, err := steps(c).LookupStep(ctx, &cairnv1.LookupStepRequest{Step: step, Namespaces: []string{"main"}})
			return err
		}, [4]outcome{unauthenticated, allowed, allowed, allowed}},
		{"CacheService/LookupStep (pr/1, main)", func(c *grpc.ClientConn) error {
			_, err := steps(c).LookupStep(ctx, &cairnv1.LookupStepRequest{Step: step, Namespaces: []string{"pr/1", "main"}})
			return err
		}, [4]outcome{unauthenticated, denied, allowed, allowed}},
		{"CacheService/LookupChain", func(c *grpc.ClientConn) error {
			_, err := steps(c).LookupChain(ctx, &cairnv1.LookupChainRequest{Steps: []*cairnv1.Step{step}, Namespaces: []string{"main"}})
			return err
		}, [4]outcome{unauthenticated, allowed, allowed, allowed}},
		{"CacheService/RecordStep (main)", func(c *grpc.ClientConn) error {
			_, err := steps(c).RecordStep(ctx, &cairnv1.RecordStepRequest{Step: step, Namespace: "main"})
			return err
		}, [4]outcome{unauthenticated, denied, denied, allowed}},
		{"CacheService/RecordStep (pr/1)", func(c *grpc.ClientConn) error {
			_, err := steps(c).RecordStep(ctx, &cairnv1.RecordStepRequest{Step: step, Namespace: "pr/1"})
			return err
		}, [4]outcome{unauthenticated, denied, allowed, allowed}},
		{"CacheService/ListSteps", func(c *grpc.ClientConn) error {
			_, err := steps(c).ListSteps(ctx, &cairnv1.ListStepsRequest{})
			return err
		}, [4]outcome{unauthenticated, denied, denied, allowed}},
		{"CacheService/DeleteStep", func(c *grpc.ClientConn) error {
			_, err := steps(c).DeleteStep(ctx, &cairnv1.DeleteStepRequest{Key: d, Namespace: "pr/1"})
			return err
		}, [4]outcome{unauthenticated, denied, denied, allowed}},
		{"LayerService/PushLayer", func(c *grpc.ClientConn) error {
			s, err := layers(c).PushLayer(ctx)
			if err != nil {
				return err
			}
			_ = s.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Header{Header: &cairnv1.PushLayerHeader{}}})
			_, err = s.CloseAndRecv()
			return err
		}, [4]outcome{unauthenticated, denied, allowed, allowed}},
		{"LayerService/PullLayer", func(c *grpc.ClientConn) error {
			s, err := layers(c).PullLayer(ctx, &cairnv1.PullLayerRequest{Digest: d})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, [4]outcome{unauthenticated, allowed, allowed, allowed}},
		{"LayerService/StatLayer", func(c *grpc.ClientConn) error {
			_, err := layers(c).StatLayer(ctx, &cairnv1.StatLayerRequest{Digest: d})
			return err
		}, [4]outcome{unauthenticated, allowed, allowed, allowed}},
		{"LayerService/ListLayers", func(c *grpc.ClientConn) error {
			_, err := layers(c).ListLayers(ctx, &cairnv1.ListLayersRequest{})
			return err
		}, [4]outcome{unauthenticated, denied, denied, allowed}},
		{"LayerService/DeleteLayer", func(c *grpc.ClientConn) error {
			_, err := layers(c).DeleteLayer(ctx, &cairnv1.DeleteLayerRequest{Digest: d})
			return err
		}, [4]outcome{unauthenticated, denied, denied, allowed}},
		{"LayerService/FindMissingChunks", func(c *grpc.ClientConn) error {
			_, err := layers(c).FindMissingChunks(ctx, &cairnv1.FindMissingChunksRequest{})
			return err
		}, [4]outcome{unauthenticated, denied, allowed, allowed}},
		{"LayerService/PutChunks", func(c *grpc.ClientConn) error {
			s, err := layers(c).PutChunks(ctx)
			if err != nil {
				return err
			}
			_, err = s.CloseAndRecv()
			return err
		}, [4]outcome{unauthenticated, denied, allowed, allowed}},
		{"LayerService/CommitLayer", func(c *grpc.ClientConn) error {
			_, err := layers(c).CommitLayer(ctx, &cairnv1.CommitLayerRequest{Digest: d})
			return err
		}, [4]outcome{unauthenticated, denied, allowed, allowed}},
		{"LayerService/GetLayerChunks", func(c *grpc.ClientConn) error {
			_, err := layers(c).GetLayerChunks(ctx, &cairnv1.GetLayerChunksRequest{Digest: d})
			return err
		}, [4]outcome{unauthenticated, allowed, allowed, allowed}},
		{"LayerService/GetChunks", func(c *grpc.ClientConn) error {
			s, err := layers(c).GetChunks(ctx, &cairnv1.GetChunksRequest{})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, [4]outcome{unauthenticated, allowed, allowed, allowed}},
		{"LayerService/GetStats", func(c *grpc.ClientConn) error {
			_, err := layers(c).GetStats(ctx, &cairnv1.GetStatsRequest{})
			return err
		}, [4]outcome{unauthenticated, denied, denied, allowed}},
		{"LayerService/VerifyStore", func(c *grpc.ClientConn) error {
			_, err := layers(c).VerifyStore(ctx, &cairnv1.VerifyStoreRequest{})
			return err
		}, [4]outcome{unauthenticated, denied, denied, allowed}},
		{"LayerService/CollectGarbage", func(c *grpc.ClientConn) error {
			_, err := layers(c).CollectGarbage(ctx, &cairnv1.CollectGarbageRequest{DryRun: true})
			return err
		}, [4]outcome{unauthenticated, denied, denied, allowed}},
		{"RegistryService/ListImages", func(c *grpc.ClientConn) error {
			_, err := images(c).ListImages(ctx, &cairnv1.ListImagesRequest{})
			return err
		}, [4]outcome{unauthenticated, denied, denied, allowed}},
		{"RegistryService/DeleteImage", func(c *grpc.ClientConn) error {
			_, err := images(c).DeleteImage(ctx, &cairnv1.DeleteImageRequest{Repository: "cache/app", Reference: "v1"})
			return err
		}, [4]outcome{unauthenticated, denied, denied, allowed}},
		{"grpc.health.v1.Health/Check", func(c *grpc.ClientConn) error {
			_, err := healthpb.NewHealthClient(c).Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		}, [4]outcome{allowed, allowed, allowed, allowed}},
	}
	// Every method of the cairn services has a row.
	rows := map[string]bool{}
	for _, m := range matrix {
		name, _, _ := cutSpace(m.method)
		rows["/cairn.v1."+name] = true
		rows["/"+name] = true
	}
	for method, rule := range authTable {
		if !rows[method] && !rule.Public {
			t.Errorf("method %s has no row in the matrix", method)
		}
	}
	callers := []string{"anonymous", "reader", "pr", "admin"}
	conns := make([]*grpc.ClientConn, len(callers))
	for i, who := range callers {
		opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		if who != "anonymous" {
			opts = append(opts, grpc.WithPerRPCCredentials(auth.PerRPCToken(tokens[who], false)))
		}
		conn, err := grpc.NewClient(addr, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		conns[i] = conn
	}
	for _, m := range matrix {
		for i, who := range callers {
			err := m.call(conns[i])
			if got := outcomeOf(err); got != m.want[i] {
				t.Errorf("%s as %s: %v (%v), want %v", m.method, who, got, err, m.want[i])
			}
		}
	}
	// A wrong token is UNAUTHENTICATED, never anonymous.
	bad, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.PerRPCToken("cairn_wrong", false)))
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if _, err := layers(bad).StatLayer(ctx, &cairnv1.StatLayerRequest{Digest: d}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("a wrong token: %v, want UNAUTHENTICATED", err)
	}
}

func cutSpace(s string) (string, string, bool) {
	for i := range s {
		if s[i] == ' ' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// serveOnLoopback serves a fresh cache with opts on 127.0.0.1 and returns
// the address; the test's cleanup stops it.
func serveOnLoopback(t *testing.T, opts Options) string {
	t.Helper()
	c, err := cache.Open(context.Background(), cache.Options{Dir: t.TempDir(), Backend: mem.New()})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(c, opts)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		c.Close()
	})
	return lis.Addr().String()
}
