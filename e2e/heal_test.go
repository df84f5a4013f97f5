package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/backend/fs"
	"github.com/cairnbuild/cairn/backend/s3"
	"github.com/cairnbuild/cairn/client"
)

// blobStore opens the server's blob store beside it, as an operator's
// tools (or a failing disk) would reach it.
func (s *server) blobStore() backend.Store {
	s.t.Helper()
	if c := s.backend.s3; c != nil {
		b, err := s3.New(context.Background(), s3.Options{Endpoint: c.endpoint, Bucket: c.bucket, AccessKey: c.accessKey, SecretKey: c.secretKey})
		if err != nil {
			s.t.Fatal(err)
		}
		return b
	}
	b, err := fs.New(filepath.Join(s.dataDir, "blobs"))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { b.Close() })
	return b
}

// packs lists the pack objects of store.
func packs(t *testing.T, store backend.Store) []backend.Info {
	t.Helper()
	var out []backend.Info
	if err := store.List(context.Background(), "packs/", func(i backend.Info) error { out = append(out, i); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("no packs")
	}
	return out
}

// editObject replaces an object by what edit makes of its bytes.
func editObject(t *testing.T, store backend.Store, key string, edit func([]byte) []byte) {
	t.Helper()
	ctx := context.Background()
	rc, err := store.Open(ctx, key, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	b = edit(bytes.Clone(b))
	if err := store.Put(ctx, key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
}

type verifyJSON struct {
	NewlyQuarantined int64           `json:"newly_quarantined"`
	Quarantined      []string        `json:"quarantined_chunks"`
	DamagedLayers    []digest.Digest `json:"damaged_layers"`
	DamagedSteps     []digest.Digest `json:"damaged_steps"`
	Problems         []string        `json:"problems"`
}

// TestHeal is issue 14's points 1 and 2 with the real binary: a byte
// flipped inside a pack makes the pull fail loudly and the layer show as
// damaged; a re-push of the same file sends the bad chunk again and the
// layer pulls back whole; cairn verify finds a flipped record and a
// damaged pack footer that no read has touched, and after a re-push the
// store verifies clean.
func TestHeal(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) { testHeal(t, b) })
	}
}

func testHeal(t *testing.T, b backendConfig) {
	s := startServer(t, b)
	store := s.blobStore()
	dir := t.TempDir()
	tarA := filepath.Join(dir, "a.tar")
	dataA := writeTar(t, tarA, goSrcTree(t, "encoding"))
	var pa pushJSON
	s.okJSON(&pa, nil, "push", tarA, "--instruction", "RUN make a")
	all := packs(t, store)

	// 1. Flip a payload byte of the first record of every pack: the pull
	// fails, saying so, and the layer shows as damaged.
	for _, p := range all {
		editObject(t, store, p.Key, func(b []byte) []byte { b[20] ^= 0x40; return b })
	}
	out := filepath.Join(dir, "out")
	r := s.cli(nil, "pull", pa.Digest.String(), "-o", out)
	if r.code == 0 || !strings.Contains(r.stderr, "quarantined") {
		t.Fatalf("pull of a corrupted layer: %v", r)
	}
	var info client.LayerInfo
	s.okJSON(&info, nil, "stat", pa.Digest.String())
	if info.DamagedChunks == 0 {
		t.Errorf("stat after the failed pull: %+v, want damaged chunks", info)
	}
	if r := s.ok(nil, "ls"); !strings.Contains(r.stdout, "DAMAGED") {
		t.Errorf("ls does not show the damaged layer:\n%s", r.stdout)
	}
	// The re-push sends the quarantined chunk (the issue: it sent 0).
	var again pushJSON
	s.okJSON(&again, nil, "push", tarA)
	if again.Digest != pa.Digest || again.ChunksSent == 0 {
		t.Errorf("re-push: %+v; want the same digest, chunks sent", again)
	}
	// Reads find the other flipped records one window at a time; each
	// re-push heals what they found, until the layer pulls whole.
	for round := 0; ; round++ {
		r := s.cli(nil, "pull", pa.Digest.String(), "-o", out)
		if r.code == 0 {
			break
		}
		if round == len(all) {
			t.Fatalf("still damaged after %d re-pushes: %v", round, r)
		}
		s.ok(nil, "push", tarA)
	}
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, dataA) {
		t.Fatalf("healed pull: %d bytes, %v", len(got), err)
	}

	// 2. Damage nobody has read yet: cairn verify finds it. A second
	// layer; one of its packs gets a flipped record, another a flipped
	// footer (its records stay good).
	tarB := filepath.Join(dir, "b.tar")
	writeTar(t, tarB, map[string][]byte{"random": seeded(5, 10<<20)}) // incompressible: several packs
	before := map[string]bool{}
	for _, p := range packs(t, store) {
		before[p.Key] = true
	}
	var pb pushJSON
	s.okJSON(&pb, nil, "push", tarB, "--instruction", "RUN make b")
	var fresh []string
	for _, p := range packs(t, store) {
		if !before[p.Key] {
			fresh = append(fresh, p.Key)
		}
	}
	if len(fresh) < 2 {
		t.Fatalf("layer b made %d packs; the test needs 2", len(fresh))
	}
	editObject(t, store, fresh[0], func(b []byte) []byte { b[20] ^= 0x40; return b })
	editObject(t, store, fresh[1], func(b []byte) []byte { b[len(b)-1] ^= 0x40; return b })
	var rep verifyJSON
	r = s.cli(nil, "verify", "--json")
	if r.code != 1 {
		t.Fatalf("verify of a damaged store: %v", r)
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err, r)
	}
	if rep.NewlyQuarantined == 0 || !slices.Contains(rep.DamagedLayers, pb.Digest) || !slices.Contains(rep.DamagedSteps, pb.Step.Key) {
		t.Errorf("verify: %+v; want a chunk of layer b quarantined, layer b and its step damaged", rep)
	}
	if !slices.ContainsFunc(rep.Problems, func(p string) bool { return strings.Contains(p, filepath.Base(fresh[1])) }) {
		t.Errorf("verify problems %q; want the pack with the damaged footer", rep.Problems)
	}
	s.ok(nil, "push", tarB)
	r = s.cli(nil, "verify", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err, r)
	}
	if len(rep.Quarantined) != 0 || len(rep.DamagedLayers) != 0 {
		t.Errorf("verify after the re-push: %+v", rep)
	}
}

// TestStepManagement is issue 14's point 4 with the real binary: step
// records are listed and deleted, a removed layer takes its steps with it
// (they do not come back as hits when the same bytes are pushed again),
// and oversized records are refused.
func TestStepManagement(t *testing.T) {
	s := startServer(t, backendConfig{name: "fs"})
	dir := t.TempDir()
	tarA := filepath.Join(dir, "a.tar")
	writeTar(t, tarA, goSrcTree(t, "encoding/json"))
	var pa pushJSON
	s.okJSON(&pa, nil, "push", tarA, "--instruction", "RUN make a")
	s.ok(nil, "record", "--instruction", "ENV A=1")

	var recs []client.StepRecord
	s.okJSON(&recs, nil, "steps", "ls")
	if len(recs) != 2 {
		t.Fatalf("steps ls: %d records, want 2", len(recs))
	}
	s.okJSON(&recs, nil, "steps", "ls", "--layer", pa.Digest.String())
	if len(recs) != 1 || recs[0].Key != pa.Step.Key {
		t.Fatalf("steps ls --layer: %+v", recs)
	}

	// rm of the layer deletes its step: it stays a miss after the same
	// bytes are pushed again.
	s.ok(nil, "lookup", "--instruction", "RUN make a")
	s.ok(nil, "rm", pa.Digest.String())
	s.want(exitMiss, nil, "lookup", "--instruction", "RUN make a")
	s.ok(nil, "push", tarA)
	s.want(exitMiss, nil, "lookup", "--instruction", "RUN make a")

	// steps rm.
	var env stepJSON
	s.okJSON(&env, nil, "lookup", "--instruction", "ENV A=1")
	s.ok(nil, "steps", "rm", env.Key.String())
	s.want(exitMiss, nil, "lookup", "--instruction", "ENV A=1")
	s.want(exitNotFound, []string{"not found"}, "steps", "rm", env.Key.String())
	s.okJSON(&recs, nil, "steps", "ls")
	if len(recs) != 0 {
		t.Errorf("steps ls after deleting everything: %+v", recs)
	}

	// Bounds: build args over 64 KiB together (an instruction over 128
	// KiB cannot pass through a command line, so the client library sends
	// that one).
	big := strings.Repeat("x", 30<<10)
	s.want(1, []string{"build args"}, "record", "--instruction", "RUN make", "--build-arg", "A="+big, "--build-arg", "B="+big, "--build-arg", "C="+big)
	c, err := client.Dial(t.Context(), s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.RecordStep(t.Context(), "", client.Step{Instruction: "RUN " + strings.Repeat("y", 200<<10)}, nil, nil)
	if !errors.Is(err, client.ErrInvalidArgument) {
		t.Errorf("record of a 200 KiB instruction: %v, want ErrInvalidArgument", err)
	}
	var st client.Stats
	s.okJSON(&st, nil, "stat")
	if st.Steps != 0 {
		t.Errorf("%d step records after the refused ones, want 0", st.Steps)
	}
}
