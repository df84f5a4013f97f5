package client

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc/codes"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// TestStats checks that Stats is one GetStats call, whatever the number of
// layers, and that it reports what the server says.
func TestStats(t *testing.T) {
	ctx := context.Background()
	f := newFakeServer()
	c := startFake(t, f)

	st, err := c.Stats(ctx)
	if err != nil {
		t.Fatalf("Stats of an empty server: %v", err)
	}
	if st != (Stats{}) {
		t.Errorf("Stats of an empty server = %+v, want zeros (and no ratio)", st)
	}

	var logical int64
	for i := range 5 {
		data := randomBytes(uint64(i+1), 300<<10)
		if _, err := c.Push(ctx, bytes.NewReader(data), PushOptions{}); err != nil {
			t.Fatal(err)
		}
		logical += int64(len(data))
	}
	if _, err := c.RecordStep(ctx, "", Step{Instruction: "RUN make"}, nil, nil); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.statsCalls, f.listCalls, f.recipeCalls = 0, 0, 0
	chunks := int64(len(f.chunks))
	f.mu.Unlock()

	st, err = c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{Layers: 5, Chunks: chunks, Steps: 1, LogicalBytes: logical, StoredBytes: logical / 2, DedupRatio: 2,
		IngestBytes: logical / 2, IngestChunks: chunks} // the fake compacts nothing
	// The fake halves each chunk's size, rounding down.
	if st.StoredBytes > want.StoredBytes || st.StoredBytes < want.StoredBytes-chunks {
		t.Errorf("stored bytes %d, want about %d", st.StoredBytes, want.StoredBytes)
	}
	if st.DedupRatio < 2 || st.DedupRatio > 2.01 {
		t.Errorf("dedup ratio %v, want logical / stored, about 2", st.DedupRatio)
	}
	if st.IngestBytes != st.StoredBytes {
		t.Errorf("ingest tier %d bytes, want the %d stored", st.IngestBytes, st.StoredBytes)
	}
	st.StoredBytes, st.DedupRatio, st.IngestBytes = want.StoredBytes, want.DedupRatio, want.IngestBytes
	if st != want {
		t.Errorf("Stats = %+v, want %+v", st, want)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.statsCalls != 1 || f.listCalls != 0 || f.recipeCalls != 0 {
		t.Errorf("Stats made %d GetStats, %d ListLayers and %d GetLayerChunks calls; want one GetStats only",
			f.statsCalls, f.listCalls, f.recipeCalls)
	}
}

func TestStatsError(t *testing.T) {
	f := newFakeServer()
	f.statsErr = cairnErr(codes.Unavailable, cairnv1.ReasonUnavailable, "index: unavailable")
	c := startFake(t, f)
	if _, err := c.Stats(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Stats from a server that cannot serve: %v, want ErrUnavailable", err)
	}
}
