package lookup

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cairnbuild/cairn/backend/fs"
	"github.com/cairnbuild/cairn/cache"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
	"github.com/cairnbuild/cairn/server"
)

// startServer runs a server the way `cairn serve` does on the fs backend:
// a Badger index in dir/index, blobs in dir/blobs, a Prometheus registry
// (so calls pass through the metrics interceptor as in production), gRPC on
// a TCP port of 127.0.0.1. It returns the address and a stop function that
// shuts the server down and closes the cache and the store.
//
// It is the only code here that knows how a server is assembled; if
// server.New or cache.Open change, this is what to adapt.
func startServer(dir string) (addr string, stop func() error, err error) {
	ctx := context.Background()
	st, err := fs.New(filepath.Join(dir, "blobs"))
	if err != nil {
		return "", nil, err
	}
	c, err := cache.Open(ctx, cache.Options{Dir: filepath.Join(dir, "index"), Backend: st})
	if err != nil {
		st.Close()
		return "", nil, err
	}
	srv, err := server.New(c, server.Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		c.Close()
		st.Close()
		return "", nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.Close()
		st.Close()
		return "", nil, err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	stop = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		return errors.Join(<-served, c.Close(), st.Close())
	}
	return lis.Addr().String(), stop, nil
}

// dial opens the lean client's connection: one plain grpc.ClientConn, no
// interceptors, no retry policy, the default options otherwise.
func dial(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// stepAt is step i of chain n: a mix of what a Dockerfile records, all for
// linux/amd64 with two build args. Every fifth step is a COPY (with an
// inputs digest), every fifth an ENV (no layer), the rest RUNs.
func stepAt(n, i int) *cairnv1.Step {
	s := &cairnv1.Step{Platform: "linux/amd64", BuildArgs: []string{"GO_VERSION=1.26.8", "TARGETARCH=amd64"}}
	switch i % 5 {
	case 0:
		s.Instruction = fmt.Sprintf("COPY --link src/%d /src/%d", n, i)
		s.InputsDigest = digest.FromString(fmt.Sprintf("context %d/%d", n, i)).String()
	case 4:
		s.Instruction = fmt.Sprintf("ENV STEP_%d_%d=yes", n, i)
	default:
		s.Instruction = fmt.Sprintf("RUN apt-get update && apt-get install -y --no-install-recommends pkg-%d-%d && rm -rf /var/lib/apt/lists/*", n, i)
	}
	return s
}

// config is the opaque image-config fragment every record carries.
var config = []byte(`{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","GOLANG_VERSION=1.26.8"],"WorkingDir":"/src","Cmd":["/bin/sh"]}`)

// lookup is one recorded step: the parent it sits on, the step, and the
// key the server gave it.
type lookup struct {
	parent string
	step   *cairnv1.Step
	key    string
}

// dataset is what populate recorded: chains[n] is chain n, each of depth
// steps from scratch, in order.
type dataset struct {
	layer  string
	chains [][]lookup
	all    []lookup // every step of every chain
}

// populate pushes one small layer and records chains of depth steps from
// scratch through the RecordStep RPC, every step that is not an ENV
// producing that layer. Chains are recorded 16 at a time, each step on the
// previous one's next_parent.
func populate(ctx context.Context, conn *grpc.ClientConn, chains, depth int) (*dataset, error) {
	layer, err := pushLayer(ctx, cairnv1.NewLayerServiceClient(conn), 64<<10)
	if err != nil {
		return nil, fmt.Errorf("push: %w", err)
	}
	steps := cairnv1.NewCacheServiceClient(conn)
	ds := &dataset{layer: layer, chains: make([][]lookup, chains)}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		slots = make(chan struct{}, 16)
	)
	for n := range chains {
		wg.Go(func() {
			slots <- struct{}{}
			defer func() { <-slots }()
			chain, err := recordChain(ctx, steps, layer, n, depth)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && first == nil {
				first = err
			}
			ds.chains[n] = chain
		})
	}
	wg.Wait()
	if first != nil {
		return nil, first
	}
	for _, c := range ds.chains {
		ds.all = append(ds.all, c...)
	}
	return ds, nil
}

func recordChain(ctx context.Context, c cairnv1.CacheServiceClient, layer string, n, depth int) ([]lookup, error) {
	parent := ""
	out := make([]lookup, 0, depth)
	for i := range depth {
		req := &cairnv1.RecordStepRequest{Parent: parent, Step: stepAt(n, i), Config: config}
		if i%5 != 4 {
			req.Layer = &cairnv1.LayerDescriptor{Digest: layer}
		}
		resp, err := c.RecordStep(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("record chain %d step %d: %w", n, i, err)
		}
		out = append(out, lookup{parent: parent, step: req.Step, key: resp.GetRecord().GetKey()})
		parent = resp.GetRecord().GetNextParent()
	}
	return out, nil
}

// pushLayer pushes size random bytes as one layer and returns its digest.
func pushLayer(ctx context.Context, c cairnv1.LayerServiceClient, size int) (string, error) {
	data := make([]byte, size)
	rand.Read(data)
	stream, err := c.PushLayer(ctx)
	if err != nil {
		return "", err
	}
	n := int64(size)
	msgs := []*cairnv1.PushLayerRequest{
		{Content: &cairnv1.PushLayerRequest_Header{Header: &cairnv1.PushLayerHeader{SizeBytes: &n}}},
		{Content: &cairnv1.PushLayerRequest_Data{Data: data}},
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			_, rerr := stream.CloseAndRecv()
			return "", errors.Join(err, rerr)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return "", err
	}
	return resp.GetLayer().GetDigest(), nil
}
