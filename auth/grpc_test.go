package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// testHealth is a tiny service for the interceptor: Check writes to the
// namespace named by its request's service field (its handler checks the
// namespace, as a real namespaced handler does), List reads, and Watch is
// an admin stream.
type testHealth struct {
	healthpb.UnimplementedHealthServer
}

func (testHealth) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	if err := Check(ctx, Write, req.Service); err != nil {
		return nil, err // a plain auth error: the interceptor gives it its code
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (testHealth) List(ctx context.Context, _ *healthpb.HealthListRequest) (*healthpb.HealthListResponse, error) {
	if _, ok := FromContext(ctx); !ok {
		return nil, errors.New("no identity in the handler's context")
	}
	return &healthpb.HealthListResponse{}, nil
}

func (testHealth) Watch(_ *healthpb.HealthCheckRequest, s grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	if id, ok := FromContext(s.Context()); !ok || !id.AllowedAll(Admin) {
		return errors.New("stream handler without the admin identity")
	}
	return s.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING})
}

var healthTable = map[string]MethodRule{
	"/grpc.health.v1.Health/Check": {Action: Write, Namespaced: true},
	"/grpc.health.v1.Health/List":  {Action: Read},
	"/grpc.health.v1.Health/Watch": {Action: Admin},
}

const grpcFile = `
tokens:
  - {name: reader, sha256: %s, scopes: [{actions: [read], namespaces: [main]}]}
  - name: pr-1
    sha256: %s
    scopes:
      - {actions: [read], namespaces: [main, pr/1]}
      - {actions: [write], namespaces: [pr/1]}
  - {name: admin, sha256: %s, scopes: [{actions: [read, write, delete, admin], namespaces: ["*"]}]}
anonymous:
  - {actions: [read], namespaces: ["public/*"]}
`

func grpcAuthenticator(t *testing.T, anonymous bool) *Authenticator {
	file := fmt.Sprintf(grpcFile, HashToken("cairn_reader"), HashToken("cairn_pr"), HashToken("cairn_admin"))
	if !anonymous {
		file = file[:strings.Index(file, "anonymous:")]
	}
	c, err := ParseConfig([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// syncBuffer is a log destination safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// serveGRPC starts the test service over TCP on loopback, behind the
// interceptors, and returns a client connection per token ("" for none).
func serveGRPC(t *testing.T, a *Authenticator, table map[string]MethodRule, log *slog.Logger) func(token string) healthpb.HealthClient {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(
		grpc.UnaryInterceptor(UnaryServerInterceptor(a, table, log)),
		grpc.StreamInterceptor(StreamServerInterceptor(a, table, log)),
	)
	healthpb.RegisterHealthServer(s, testHealth{})
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return func(token string) healthpb.HealthClient {
		opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		if token != "" {
			opts = append(opts, grpc.WithPerRPCCredentials(PerRPCToken(token, false)))
		}
		conn, err := grpc.NewClient(lis.Addr().String(), opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return healthpb.NewHealthClient(conn)
	}
}

func TestInterceptorTable(t *testing.T) {
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	client := serveGRPC(t, grpcAuthenticator(t, true), healthTable, log)
	ctx := context.Background()
	check := func(ns string) func(healthpb.HealthClient) error {
		return func(c healthpb.HealthClient) error {
			_, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: ns})
			return err
		}
	}
	list := func(c healthpb.HealthClient) error {
		_, err := c.List(ctx, &healthpb.HealthListRequest{})
		return err
	}
	watch := func(c healthpb.HealthClient) error {
		s, err := c.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}
	for _, c := range []struct {
		who   string
		token string
		call  string
		do    func(healthpb.HealthClient) error
		want  codes.Code
		why   string
	}{
		{"anonymous", "", "List", list, codes.OK, "anonymous reads public/*, so it may read content-addressed data"},
		{"anonymous", "", "Check pr/1", check("pr/1"), codes.Unauthenticated, "anonymous writes nowhere: log in"},
		{"anonymous", "", "Watch", watch, codes.Unauthenticated, "admin needs a token"},
		{"reader", "cairn_reader", "List", list, codes.OK, "reads main"},
		{"reader", "cairn_reader", "Check main", check("main"), codes.PermissionDenied, "writes nowhere: the interceptor refuses"},
		{"reader", "cairn_reader", "Watch", watch, codes.PermissionDenied, "no admin"},
		{"pr", "cairn_pr", "Check pr/1", check("pr/1"), codes.OK, "its own namespace"},
		{"pr", "cairn_pr", "Check main", check("main"), codes.PermissionDenied, "write in another namespace: the handler refuses"},
		{"pr", "cairn_pr", "Check pr/2", check("pr/2"), codes.PermissionDenied, "another pull request"},
		{"pr", "cairn_pr", "Watch", watch, codes.PermissionDenied, "no admin"},
		{"admin", "cairn_admin", "Check main", check("main"), codes.OK, "everything"},
		{"admin", "cairn_admin", "Watch", watch, codes.OK, "admin over *"},
		{"bad token", "cairn_nope", "List", list, codes.Unauthenticated, "a bad token is not anonymous"},
	} {
		err := c.do(client(c.token))
		if got := status.Code(err); got != c.want {
			t.Errorf("%s %s: got %v (%v), want %v: %s", c.who, c.call, got, err, c.want, c.why)
		}
	}
	if !strings.Contains(logs.String(), "who=admin") || !strings.Contains(logs.String(), "action=admin") || !strings.Contains(logs.String(), "/grpc.health.v1.Health/Watch") {
		t.Errorf("no audit line for the admin call:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "Health/List") {
		t.Errorf("a read was audited:\n%s", logs.String())
	}
}

func TestInterceptorWithoutAnonymous(t *testing.T) {
	client := serveGRPC(t, grpcAuthenticator(t, false), healthTable, nil)
	_, err := client("").List(context.Background(), &healthpb.HealthListRequest{})
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "token") {
		t.Errorf("no token, no anonymous access: got %v, want UNAUTHENTICATED asking for a token", err)
	}
}

func TestInterceptorFailsClosed(t *testing.T) {
	table := map[string]MethodRule{"/grpc.health.v1.Health/Check": {Action: Write, Namespaced: true}}
	client := serveGRPC(t, grpcAuthenticator(t, true), table, nil)
	_, err := client("cairn_admin").List(context.Background(), &healthpb.HealthListRequest{})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "not in the auth table") {
		t.Errorf("method without a rule: got %v, want PERMISSION_DENIED", err)
	}
}

func TestInterceptorPublic(t *testing.T) {
	table := map[string]MethodRule{"/grpc.health.v1.Health/List": {Public: true}}
	client := serveGRPC(t, grpcAuthenticator(t, false), table, nil)
	if _, err := client("").List(context.Background(), &healthpb.HealthListRequest{}); err != nil {
		t.Errorf("public method without a token: %v", err)
	}
	if _, err := client("cairn_nope").List(context.Background(), &healthpb.HealthListRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("public method with a bad token: got %v, want UNAUTHENTICATED", err)
	}
}

func TestMalformedAuthorization(t *testing.T) {
	for _, h := range []string{"Basic abc", "Bearer", "Bearer  ", "cairn_x"} {
		ctx := metadataCtx(h)
		if _, sent, err := bearerFromMetadata(ctx); !sent || err == nil {
			t.Errorf("%q: sent %v, err %v; want an error", h, sent, err)
		}
	}
	if tok, _, err := bearerFromMetadata(metadataCtx("bearer cairn_x")); err != nil || tok != "cairn_x" {
		t.Errorf("lowercase scheme: %q %v", tok, err)
	}
}

func TestCheckTable(t *testing.T) {
	services := []grpc.ServiceDesc{healthpb.Health_ServiceDesc}
	if err := CheckTable(healthTable, services); err != nil {
		t.Errorf("complete table: %v", err)
	}
	table := map[string]MethodRule{
		"/grpc.health.v1.Health/Check": {Action: Write, Namespaced: true},
		"/grpc.health.v1.Health/List":  {},
		"/grpc.health.v1.Health/Gone":  {Action: Read},
	}
	err := CheckTable(table, services)
	for _, want := range []string{"Watch has no auth rule", "List: rule has no valid action", "Gone, which no service has"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want it to say %q", err, want)
		}
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, testHealth{})
	if err := CheckServer(healthTable, s); err != nil {
		t.Errorf("CheckServer: %v", err)
	}
}

func metadataCtx(authorization string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", authorization))
}

func newTestLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }
