package client

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// stallServer is the fake server stalling where a test says: PullLayer
// sends each message of a layer only when the test opens gate (never, if
// the test never does), and FindMissingChunks never answers. Both return
// when their call is cancelled, and say so on cancelled.
type stallServer struct {
	*fakeServer
	gate      chan struct{}
	cancelled chan string
}

func (s *stallServer) PullLayer(req *cairnv1.PullLayerRequest, stream cairnv1.LayerService_PullLayerServer) error {
	s.mu.Lock()
	l, err := s.layer(req.GetDigest())
	data := s.content(req.GetDigest())
	s.mu.Unlock()
	if err != nil {
		return err
	}
	// The layer's info, then the data in 12 messages.
	msgs := []*cairnv1.PullLayerResponse{{Layer: l}}
	for i := range 12 {
		msgs = append(msgs, &cairnv1.PullLayerResponse{Data: data[i*len(data)/12 : (i+1)*len(data)/12]})
	}
	for _, m := range msgs {
		select {
		case <-s.gate:
		case <-stream.Context().Done():
			s.cancelled <- "PullLayer"
			return stream.Context().Err()
		}
		if err := stream.Send(m); err != nil {
			return err
		}
	}
	return nil
}

func (s *stallServer) FindMissingChunks(ctx context.Context, _ *cairnv1.FindMissingChunksRequest) (*cairnv1.FindMissingChunksResponse, error) {
	<-ctx.Done()
	s.cancelled <- "FindMissingChunks"
	return nil, ctx.Err()
}

// startStall serves a stallServer over bufconn, with layer stored, and
// returns a Client on it.
func startStall(t *testing.T, layer []byte) (*stallServer, *Client) {
	t.Helper()
	f := newFakeServer()
	if _, err := startFake(t, f).Push(context.Background(), bytes.NewReader(layer), PushOptions{}); err != nil {
		t.Fatal(err)
	}
	s := &stallServer{fakeServer: f, gate: make(chan struct{}), cancelled: make(chan string, 4)}
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	cairnv1.RegisterLayerServiceServer(gs, s)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	c, err := Dial(context.Background(), "passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return s, c
}

// notices records what IdleOptions.Notice is told.
type notices struct {
	mu   sync.Mutex
	list []string
	ch   chan struct{} // a value per notice, for tests that wait for one
}

func newNotices() *notices { return &notices{ch: make(chan struct{}, 100)} }

func (n *notices) notice(what string, waited time.Duration) {
	n.mu.Lock()
	n.list = append(n.list, what+" "+waited.String())
	n.mu.Unlock()
	select {
	case n.ch <- struct{}{}:
	default:
	}
}

func (n *notices) all() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.list...)
}

// wantCancelled waits for the server to see its call of method cancelled.
func (s *stallServer) wantCancelled(t *testing.T, method string) {
	t.Helper()
	select {
	case got := <-s.cancelled:
		if got != method {
			t.Errorf("server saw %s cancelled, want %s", got, method)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("the server's %s was never cancelled", method)
	}
}

// TestIdleTimeout: a pull or a push whose server sends or answers nothing
// reports what it waits for while it waits, then fails with ErrIdle naming
// it, and cancels its call.
func TestIdleTimeout(t *testing.T) {
	layer := bytes.Repeat([]byte("idle layer "), 1200)
	d := digest.FromBytes(layer)
	for _, tt := range []struct {
		name, what, method string
		call               func(context.Context, *Client, IdleOptions) error
	}{
		{"pull", "pulling " + d.String(), "PullLayer", func(ctx context.Context, c *Client, idle IdleOptions) error {
			_, err := c.Pull(ctx, d, io.Discard, PullOptions{Idle: idle})
			return err
		}},
		{"push", "asking which chunks the server lacks", "FindMissingChunks", func(ctx context.Context, c *Client, idle IdleOptions) error {
			// Not seekable: no probe for a stored layer.
			_, err := c.Push(ctx, io.MultiReader(bytes.NewReader([]byte("another layer"))), PushOptions{Idle: idle})
			return err
		}},
		{"push of a file", "checking whether the server has the layer", "FindMissingChunks", func(ctx context.Context, c *Client, idle IdleOptions) error {
			_, err := c.Push(ctx, bytes.NewReader([]byte("another layer")), PushOptions{Idle: idle})
			return err
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, c := startStall(t, layer)
			n := newNotices()
			// The deadline only bounds a watchdog that never fires.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			err := tt.call(ctx, c, IdleOptions{Timeout: 300 * time.Millisecond, NoticeEvery: 100 * time.Millisecond, Notice: n.notice})
			if !errors.Is(err, ErrIdle) {
				t.Fatalf("got %v, want ErrIdle", err)
			}
			if want := "no data from the server for 300ms while " + tt.what; err.Error() != want {
				t.Errorf("error %q, want %q", err, want)
			}
			// The 200ms notice may still be on its way when the call
			// returns.
			if got, want := strings.Join(n.all(), "; "), tt.what+" 100ms"; got != want && got != want+"; "+tt.what+" 200ms" {
				t.Errorf("notices %q, want %q and perhaps the one at 200ms", got, want)
			}
			s.wantCancelled(t, tt.method)
		})
	}
}

// TestIdleTimeoutCountsEachWait: a pull whose server sends a message each
// time the previous wait reached a notice succeeds, though it lasts longer
// than the timeout: each message moved ends a wait. Every message waits at
// least NoticeEvery, and 13 of them outlast the timeout.
func TestIdleTimeoutCountsEachWait(t *testing.T) {
	layer := bytes.Repeat([]byte("slow layer "), 1200)
	s, c := startStall(t, layer)
	n := newNotices()
	idle := IdleOptions{Timeout: time.Second, NoticeEvery: 100 * time.Millisecond, Notice: n.notice}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		for {
			select {
			case <-n.ch:
			case <-ctx.Done():
				return
			}
			select {
			case s.gate <- struct{}{}:
			case <-ctx.Done():
				return
			}
		}
	}()
	start := time.Now()
	var buf bytes.Buffer
	if _, err := c.Pull(ctx, digest.FromBytes(layer), &buf, PullOptions{Idle: idle}); err != nil {
		t.Fatalf("pull with a message per notice: %v (notices %q)", err, n.all())
	}
	if !bytes.Equal(buf.Bytes(), layer) {
		t.Fatal("pulled other bytes")
	}
	if d := time.Since(start); d < idle.Timeout {
		t.Errorf("the pull took %v, less than the timeout: the test proves nothing", d)
	}
}

// TestNoIdleOptions: without options, nothing is watched.
func TestNoIdleOptions(t *testing.T) {
	ctx := context.Background()
	got, wd := watch(ctx, IdleOptions{Notice: func(string, time.Duration) {}})
	if wd != nil || got != ctx {
		t.Error("a notice without NoticeEvery (and no timeout) made a watchdog")
	}
	wd.begin("nothing")()
	wd.stop()
	if err := wd.explain(ctx, io.EOF); err != io.EOF {
		t.Errorf("a nil watchdog's explain changed the error to %v", err)
	}
}
