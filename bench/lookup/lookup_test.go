package lookup

import (
	"context"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// TestRoundTrip runs the benchmarks' setup once, small: every recorded step
// must come back as a hit with its key and layer, from LookupStep and from
// LookupChain; a step never recorded must miss; the empty call must answer
// SERVING.
func TestRoundTrip(t *testing.T) {
	addr, stop, err := startServer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	conn, err := dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	const chains, depth = 2, 6
	ds, err := populate(ctx, conn, chains, depth)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds.all) != chains*depth {
		t.Fatalf("populate recorded %d steps, want %d", len(ds.all), chains*depth)
	}

	health, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("Health/Check: %v", err)
	}
	if health.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Health/Check: %v, want SERVING", health.GetStatus())
	}

	steps := cairnv1.NewCacheServiceClient(conn)
	for i, l := range ds.all {
		resp, err := steps.LookupStep(ctx, &cairnv1.LookupStepRequest{Parent: l.parent, Step: l.step})
		if err != nil {
			t.Fatalf("step %d: LookupStep: %v", i, err)
		}
		if !resp.GetHit() {
			t.Fatalf("step %d (%q on %q): a miss, want a hit", i, l.step.GetInstruction(), l.parent)
		}
		if got := resp.GetRecord().GetKey(); got != l.key || resp.GetKey() != l.key {
			t.Errorf("step %d: key %q (record %q), want %q", i, resp.GetKey(), got, l.key)
		}
		wantLayer := ds.layer
		if i%depth%5 == 4 {
			wantLayer = "" // ENV: no layer
		}
		if got := resp.GetRecord().GetLayer().GetDigest(); got != wantLayer {
			t.Errorf("step %d: layer %q, want %q", i, got, wantLayer)
		}
	}

	// A step never recorded, on a recorded parent: a miss that names its key.
	l := ds.chains[0][depth-1]
	resp, err := steps.LookupStep(ctx, &cairnv1.LookupStepRequest{Parent: l.parent, Step: stepAt(chains, 0)})
	if err != nil {
		t.Fatalf("LookupStep (miss): %v", err)
	}
	if resp.GetHit() || resp.GetRecord() != nil {
		t.Fatalf("a step never recorded was a hit: %v", resp)
	}
	if resp.GetKey() == "" {
		t.Errorf("a miss without its key")
	}

	for n, chain := range ds.chains {
		req := &cairnv1.LookupChainRequest{}
		for _, l := range chain {
			req.Steps = append(req.Steps, l.step)
		}
		// One step more than was recorded: the walk must stop there.
		req.Steps = append(req.Steps, stepAt(chains, 1))
		resp, err := steps.LookupChain(ctx, req)
		if err != nil {
			t.Fatalf("chain %d: LookupChain: %v", n, err)
		}
		if got := len(resp.GetHits()); got != depth {
			t.Fatalf("chain %d: %d hits, want %d", n, got, depth)
		}
		for i, h := range resp.GetHits() {
			if h.GetKey() != chain[i].key {
				t.Errorf("chain %d hit %d: key %q, want %q", n, i, h.GetKey(), chain[i].key)
			}
		}
	}
}
