package server

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/cache"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// startTCP runs a server with opts on a TCP port of 127.0.0.1, for the
// tests that need real peer addresses and real flow control, and returns
// its address and cache.
func startTCP(t *testing.T, opts Options) (string, *cache.Cache) {
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
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
		c.Close()
	})
	return lis.Addr().String(), c
}

// dialFrom connects to addr from the local address ip (127.0.0.1 and
// 127.0.0.2 are two clients on Linux loopback). A positive window sets
// small static flow-control windows, so that a stream whose client stops
// reading stalls the server after that many bytes.
func dialFrom(t *testing.T, addr, ip string, window int32) cairnv1.LayerServiceClient {
	t.Helper()
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(cairnv1.MinClientRecvMsgBytes)),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
			return d.DialContext(ctx, "tcp", addr)
		}),
	}
	if window > 0 {
		opts = append(opts, grpc.WithInitialWindowSize(window), grpc.WithInitialConnWindowSize(window))
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return cairnv1.NewLayerServiceClient(conn)
}

// stalledReader opens a download with open and reads its first message,
// which the server sends only once the call holds a transfer slot; then it
// stops reading. recv reads on, to see how the call ended.
type stalledReader struct {
	recv   func() error
	cancel context.CancelFunc
}

func stall(t *testing.T, open func(context.Context) (func() error, error)) *stalledReader {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	recv, err := open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := recv(); err != nil {
		t.Fatalf("first message of the stalled download: %v", err)
	}
	return &stalledReader{recv: recv, cancel: cancel}
}

// pullOpener opens PullLayer of d on lc.
func pullOpener(lc cairnv1.LayerServiceClient, d digest.Digest) func(context.Context) (func() error, error) {
	return func(ctx context.Context) (func() error, error) {
		s, err := lc.PullLayer(ctx, &cairnv1.PullLayerRequest{Digest: d.String()})
		if err != nil {
			return nil, err
		}
		return func() error { _, err := s.Recv(); return err }, nil
	}
}

// getChunksOpener opens GetChunks of ids on lc.
func getChunksOpener(lc cairnv1.LayerServiceClient, ids []string) func(context.Context) (func() error, error) {
	return func(ctx context.Context) (func() error, error) {
		s, err := lc.GetChunks(ctx, &cairnv1.GetChunksRequest{Digests: ids})
		if err != nil {
			return nil, err
		}
		return func() error { _, err := s.Recv(); return err }, nil
	}
}

// pullAll pulls d whole on lc within ctx.
func pullAll(ctx context.Context, lc cairnv1.LayerServiceClient, d digest.Digest) (int, error) {
	s, err := lc.PullLayer(ctx, &cairnv1.PullLayerRequest{Digest: d.String()})
	if err != nil {
		return 0, err
	}
	n := 0
	for {
		msg, err := s.Recv()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n += len(msg.GetData())
	}
}

// bigLayer pushes 6 MiB of random data, six data messages of a pull: more
// than a 64 KiB window and the server's per-stream write quota let through
// before its Send blocks.
func bigLayer(t *testing.T, c *cache.Cache) (digest.Digest, []string) {
	t.Helper()
	data := randomData(21, 6<<20)
	d := digest.FromBytes(data)
	if _, err := c.Push(context.Background(), bytes.NewReader(data), cache.PushOptions{Expected: d, Size: int64(len(data))}); err != nil {
		t.Fatal(err)
	}
	refs, err := c.Chunks(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(refs))
	for i, r := range refs {
		ids[i] = r.ID.String()
	}
	return d, ids
}

// TestSendIdleTimeout: a download whose client stops reading holds the
// only transfer slot until the send idle timeout cuts it; then another
// client's pull goes through, the stalled client learns why its call
// ended, and the server logs a stalled client, not a failure. Without the
// timeout the second pull waits for good (its deadline ends the test).
func TestSendIdleTimeout(t *testing.T) {
	for _, method := range []string{"PullLayer", "GetChunks"} {
		t.Run(method, func(t *testing.T) {
			logs := newLogRecorder()
			addr, c := startTCP(t, Options{MaxTransfers: 1, SendIdleTimeout: 200 * time.Millisecond, Logger: slog.New(logs)})
			d, ids := bigLayer(t, c)
			slow := dialFrom(t, addr, "127.0.0.1", 64<<10)
			open := pullOpener(slow, d)
			if method == "GetChunks" {
				open = getChunksOpener(slow, ids)
			}
			stalled := stall(t, open)

			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			n, err := pullAll(ctx, dialFrom(t, addr, "127.0.0.1", 0), d)
			if err != nil || n != 6<<20 {
				t.Fatalf("pull while a stalled reader held the only slot: %d bytes, %v", n, err)
			}

			for err = nil; err == nil; {
				err = stalled.recv()
			}
			wantStatus(t, err, codes.DeadlineExceeded, cairnv1.ReasonStreamIdle, "")
			rec := logs.wait(t, "/cairn.v1.LayerService/"+method)
			if rec.level != slog.LevelInfo || rec.msg != "client stalled" {
				t.Errorf("logged %v %q (code %s), want Info \"client stalled\"", rec.level, rec.msg, rec.code)
			}
			logs.noneAbove(t, slog.LevelWarn)
		})
	}
}

// TestTransfersPerClient: one client holding its share of the slots waits
// for one of its own, even with slots free, while another client (another
// address) still gets one; the waiting call goes on when the first client
// frees its slot.
func TestTransfersPerClient(t *testing.T) {
	addr, c := startTCP(t, Options{MaxTransfers: 2}) // a share of 1 slot
	d, _ := bigLayer(t, c)
	a := dialFrom(t, addr, "127.0.0.1", 64<<10)
	b := dialFrom(t, addr, "127.0.0.2", 0)

	held := stall(t, pullOpener(a, d))

	// A second call of client a waits, though a slot is free: until its
	// deadline here.
	short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := pullAll(short, a, d); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("second pull of a client holding its share: %v, want DeadlineExceeded (it must wait)", err)
	}

	// Client b takes the free slot.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if n, err := pullAll(ctx, b, d); err != nil || n != 6<<20 {
		t.Fatalf("pull of another client: %d bytes, %v", n, err)
	}

	// A call of a waits for a's slot and goes on once it is free.
	a2 := dialFrom(t, addr, "127.0.0.1", 0)
	done := make(chan error, 1)
	go func() {
		_, err := pullAll(ctx, a2, d)
		done <- err
	}()
	held.cancel()
	if err := <-done; err != nil {
		t.Fatalf("waiting pull of client a after its slot was freed: %v", err)
	}
}
