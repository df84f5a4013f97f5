package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/cairnbuild/cairn/cmd/internal/testserver"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cairnbuild/cairn/client"
	"github.com/cairnbuild/cairn/server"
)

// statServer runs a server whose RPC metrics go to the returned registry,
// so that a test can count the calls a command makes.
func statServer(t *testing.T) (string, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	return testserver.Start(t, server.Options{Registerer: reg}), reg
}

// rpcCount returns how many calls of method (e.g. "LayerService/GetStats")
// the server finished, whatever their code.
func rpcCount(t *testing.T, reg *prometheus.Registry, method string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != "cairn_rpc_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "method" && l.GetValue() == "cairn.v1."+method {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}

// TestStatTotals checks that `cairn stat` without a digest shows the
// server's totals from one GetStats call, not one call per layer, and
// that `cairn stat DIGEST` still stats the one layer.
func TestStatTotals(t *testing.T) {
	addr, reg := statServer(t)
	ctx := context.Background()
	c, err := client.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	shared := testLayer(1, 1<<20)
	var logical int64
	var last client.PushResult
	for i := range 3 {
		layer := append(append([]byte{}, shared...), testLayer(uint64(i+2), 200<<10)...)
		if last, err = c.Push(ctx, bytes.NewReader(layer), client.PushOptions{}); err != nil {
			t.Fatal(err)
		}
		logical += int64(len(layer))
	}
	if _, err := c.RecordStep(ctx, "", client.Step{Instruction: "RUN make"}, &client.LayerRef{Digest: last.Digest}, nil); err != nil {
		t.Fatal(err)
	}
	want, err := c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := map[string]float64{}
	for _, m := range []string{"LayerService/GetStats", "LayerService/ListLayers", "LayerService/GetLayerChunks", "LayerService/StatLayer"} {
		before[m] = rpcCount(t, reg, m)
	}
	calls := func(method string) float64 { return rpcCount(t, reg, method) - before[method] }

	r := runClientCLI(t, nil, nil, "stat", "--server", addr, "--json")
	if r.code != 0 {
		t.Fatalf("stat --json: exit %d: %s", r.code, r.stderr)
	}
	var got client.Stats
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("stat --json = %s: %v", r.stdout, err)
	}
	if got != want || got.Layers != 3 || got.Steps != 1 || got.LogicalBytes != logical {
		t.Errorf("stat --json = %+v, want %+v: 3 layers, 1 step, %d logical bytes", got, want, logical)
	}
	// Nothing compacted them: every chunk is in the ingest tier.
	if got.IngestChunks != got.Chunks || got.IngestBytes != got.StoredBytes || got.CompactedChunks != 0 || got.CompactedBytes != 0 {
		t.Errorf("stat --json = %+v; want every chunk and stored byte in the ingest tier", got)
	}
	// Compressible layers that share a MiB: stored is well below logical.
	if got.StoredBytes <= 0 || got.StoredBytes >= logical/2 || got.DedupRatio <= 2 {
		t.Errorf("stored %d of %d logical bytes, dedup %.2f; want the shared MiB once, compressed", got.StoredBytes, logical, got.DedupRatio)
	}

	r = runClientCLI(t, nil, nil, "stat", "--server", addr)
	if r.code != 0 {
		t.Fatalf("stat: exit %d: %s", r.code, r.stderr)
	}
	for _, line := range []string{"layers", "chunks", "steps", "logical", "stored", "ingest", "compacted", "dedup"} {
		if !strings.Contains(r.stdout, "\n"+line+" ") {
			t.Errorf("stat shows no %q line:\n%s", line, r.stdout)
		}
	}
	if !strings.Contains(r.stdout, "MiB") {
		t.Errorf("stat shows no sizes for people (MiB):\n%s", r.stdout)
	}
	if n := calls("LayerService/GetStats"); n != 2 {
		t.Errorf("two stat runs made %v GetStats calls, want 2", n)
	}
	if n := calls("LayerService/ListLayers") + calls("LayerService/GetLayerChunks"); n != 0 {
		t.Errorf("stat without a digest made %v ListLayers and GetLayerChunks calls, want none", n)
	}

	// With a digest: the layer, by one StatLayer.
	r = runClientCLI(t, nil, nil, "stat", "--server", addr, last.Digest.String())
	if r.code != 0 || !strings.Contains(r.stdout, last.Digest.String()) {
		t.Fatalf("stat DIGEST: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if n := calls("LayerService/StatLayer"); n != 1 {
		t.Errorf("stat DIGEST made %v StatLayer calls, want 1", n)
	}
	if n := calls("LayerService/GetStats"); n != 2 {
		t.Errorf("stat DIGEST called GetStats")
	}
}
