package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/opencontainers/go-digest"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/client"
)

// TestGCKill is issue 15's crash point for the collector: `cairn serve` is
// SIGKILLed at a random moment of a collection (`cairn gc --grace 0
// --pack-grace 0 --rewrite-ratio 0.1`, a subprocess, with `--compact-age
// 1ns` in odd rounds) 20 times, and after
// each restart on the same data the server counts exactly the live layers,
// every live layer pulls back with its digest, the registry's image
// validates and a verify of the whole store finds nothing wrong.
//
// The store gives each collection real work: layers of incompressible
// blocks, one pack per push. A "family" is x = {a, b, c}, then y1 = {a, d}
// and y2 = {b, e}: removing x leaves x's pack partly dead (c) and the
// collection rewrites it (then marks the old pack, and the next run
// deletes it); removing a y later leaves the rewritten pack partly dead
// again, or wholly. A "solo" layer removed leaves its pack wholly dead.
// With --compact-age 1ns (odd rounds) the collection also compacts (issue
// 17) every pack of the ingest tier, partly dead ones included, into
// frames: a kill may land while it writes its packs or moves the index to
// them ("during: rewriting" counts those too); later rounds then rewrite
// and delete compacted packs. It
// starts with 40 layers (10 families, 10 solos) of which 15 are removed;
// between rounds two families are pushed, their x removed and four older
// live layers removed, so that every round has work.
//
// The registry gives the layer-level collection work too (gcArgs has
// --untagged-max-age 0): the store starts with two images pushed to
// kill/app:latest with go-containerregistry (gzip layers of one block
// each; the first image goes untagged, its manifest, config and layers
// unreached) and a loose blob no manifest names; between rounds another
// image moves latest, and every other round or so another loose blob is
// pushed. (The tar of each gzip layer, which the server stores as a layer
// of its own, is unreached from the start.) After each restart, a
// registry HEAD (cairn stat for a tar) tells which of the unreached
// digests are still there (a kill after the layer-level collection
// deleted some but before any pack changed is logged as "during:
// layers"); the server must count exactly the live API layers, latest's
// manifest, config and layers, and the unreached ones still there, and
// kill/app:latest must pull back whole (remote.Image and validate.Image).
//
// The kill comes after a delay drawn in [0, D]: D is at first the time an
// uncut collection of the first store took on a copy of it, then that of
// the last uncut one, a quarter longer after each cut one (the next run
// has its leftovers to do). The test logs where each kill landed: during
// the collection (the gc client's request went out and no answer came:
// before any pack changed, after packs were deleted, after a rewrite wrote
// a pack), before it (the client reached no server) or after it (the
// client had its answer); fewer than a quarter during fails the test.
// After the rounds, two uncut collections finish the job (a dry run then
// plans nothing, and every unreached registry digest answers 404), every
// live layer pulls with cairn pull, cairn verify passes, and `cairn
// reindex` leaves the layer, step and stored byte counts as they were.
//
// The seed is logged; CAIRN_E2E_SEED=<seed> replays the same layers and
// draws (kills land where timing puts them).
func TestGCKill(t *testing.T) {
	if testing.Short() {
		t.Skip("pushes some 300 MiB and kills the server 20 times (a minute per backend): full-size runs only")
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("CAIRN_E2E_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("CAIRN_E2E_SEED=%q: %v", v, err)
		}
	}
	t.Logf("seed %d (replay with CAIRN_E2E_SEED=%d)", seed, seed)
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) { testGCKill(t, b, seed) })
	}
}

// gcKillRounds is the number of collections cut by a SIGKILL.
const gcKillRounds = 20

// gcLayer is a layer the test pushed.
type gcLayer struct {
	instruction string // the step recorded with it
	path        string // its tar
	digest      digest.Digest
}

// gcKill is the state of one backend's run.
type gcKill struct {
	t    *testing.T
	s    *server
	dir  string
	seed uint64
	r    *mrand.Rand
	// blocks and layers made so far: each block's content is drawn from
	// the seed and its number.
	blocks, layers int
	live           []*gcLayer
	c              *client.Client // of the running server, if dialled
	// The registry's side: the image kill/app:latest names, and what
	// nothing reaches any more that the server still has, as far as the
	// last prune saw.
	latest  *gcImage
	garbage map[digest.Digest]gcKind
	tr      *http.Transport // the registry clients'
}

// gcKind is what an unreached digest is.
type gcKind int

const (
	gcManifest gcKind = iota // a manifest latest named before
	gcBlob                   // a config or layer blob of one, or a loose blob
	// gcTar is the tar of a gzip blob, stored as a layer of its own (its
	// digest is the diffID): nothing reaches it (the blob's recipe names
	// its chunks, not it), the registry does not list it, and the next
	// collection deletes it, whether the blob is live or not.
	gcTar
)

// gcImage is an image the test pushed to kill/app:latest.
type gcImage struct {
	digest v1.Hash
	blobs  []digest.Digest // its config and layers
}

// gcArgs are the arguments of every collection the test runs: no grace
// periods (no push runs beside them), untagged manifests collected at once,
// and a low rewrite threshold so that partly dead packs are rewritten.
var gcArgs = []string{"gc", "--grace", "0", "--pack-grace", "0", "--untagged-max-age", "0", "--rewrite-ratio", "0.1"}

// gcCompactArgs are gcArgs with compaction of every pack (every one is
// older than a nanosecond): the odd rounds' collections.
var gcCompactArgs = append(slices.Clone(gcArgs), "--compact-age", "1ns")

// gcFinishArgs finish the job after the rounds: any dead byte gets its pack
// rewritten. Compaction merges many pushes' chunks into one pack, where a
// dead chunk can be less than --rewrite-ratio 0.1 of it and would be left
// (as in any pack below the ratio).
var gcFinishArgs = []string{"gc", "--grace", "0", "--pack-grace", "0", "--untagged-max-age", "0", "--rewrite-ratio", "1e-9"}

func testGCKill(t *testing.T, b backendConfig, seed uint64) {
	start := time.Now()
	g := &gcKill{t: t, s: startServer(t, b), dir: t.TempDir(), seed: seed, r: mrand.New(mrand.NewPCG(seed, 0)),
		garbage: map[digest.Digest]gcKind{}, tr: http.DefaultTransport.(*http.Transport).Clone()}
	defer g.tr.CloseIdleConnections()
	var xs, solos []*gcLayer
	for range 10 {
		x, ys := g.family()
		xs = append(xs, x)
		g.live = append(g.live, ys...)
	}
	for range 10 {
		solos = append(solos, g.solo())
	}
	for _, l := range xs {
		g.rm(l)
	}
	for _, l := range solos[:5] {
		g.rm(l)
	}
	g.live = append(g.live, solos[5:]...)
	g.pushImage()
	g.pushImage()
	g.pushLoose()
	t.Logf("store of %d layers pushed, %d removed, %d live, and an image in kill/app:latest with %d unreached digests beside it; %d packs, in %v",
		g.layers, g.layers-len(g.live), len(g.live), len(g.garbage), len(packs(t, g.s.blobStore())), time.Since(start).Round(time.Millisecond))

	// The kill delays are drawn in [0, bound]: at first the time an
	// uncut collection of this store takes, then that of the last round
	// whose collection finished before the kill, a quarter longer after
	// each cut one (whose leftovers the next one does besides its own).
	// Odd rounds compact too, which takes longer: they have a bound of
	// their own, measured the same way.
	bounds := [2]time.Duration{g.measure(gcArgs), g.measure(gcCompactArgs)}
	kills := map[string]int{}
	for round := range gcKillRounds {
		bound := &bounds[round%2]
		where, took := g.round(round, *bound)
		kills[where]++
		switch {
		case took > 0:
			*bound = took
		case strings.HasPrefix(where, "during"):
			*bound += *bound / 4
		}
		if t.Failed() {
			t.Fatalf("round %d failed (seed %d); stopping", round, seed)
		}
		if round < gcKillRounds-1 {
			g.churn()
		}
	}
	inside := kills["during: planning"] + kills["during: layers"] + kills["during: deleting"] + kills["during: rewriting"]
	t.Logf("%d kills: %d during a collection (%d with nothing changed yet, %d after unreached layers were deleted but before a pack, %d after a pack deleted, %d after a rewrite wrote a pack), %d before it (no server reached), %d after it",
		gcKillRounds, inside, kills["during: planning"], kills["during: layers"], kills["during: deleting"], kills["during: rewriting"], kills["before"], kills["after"])
	if inside < gcKillRounds/4 {
		t.Errorf("only %d of %d kills landed during a collection: the loop tests too little", inside, gcKillRounds)
	}

	// Two uncut runs finish the job: the first finishes what the cut ones
	// planned and marks the packs it empties, the second deletes those.
	s := g.s
	var rep client.GCReport
	for range 2 {
		s.okJSON(&rep, nil, gcFinishArgs...)
		t.Logf("gc after the rounds: %s", gcSummary(rep))
		if len(rep.Skipped) > 0 {
			t.Errorf("gc after the rounds skipped: %q", rep.Skipped)
		}
	}
	if g.prune(); len(g.garbage) > 0 {
		t.Errorf("after the rounds, the registry still has %d unreached digests: %v", len(g.garbage), g.garbage)
	}
	g.wantClean("after the rounds")
	g.checkCLI("after the rounds")

	// A reindex of what the collections left agrees with the index.
	var st1, st2 client.Stats
	s.okJSON(&st1, nil, "stat")
	g.hangUp()
	s.reindex()
	s.okJSON(&st2, nil, "stat")
	if st1.Layers != st2.Layers || st1.Steps != st2.Steps || st1.StoredBytes != st2.StoredBytes {
		t.Errorf("reindex after the collections: %+v, before %+v", st2, st1)
	}
	g.wantClean("after the reindex")
	g.check("after the reindex")
	t.Logf("done in %v", time.Since(start).Round(time.Millisecond))
}

// block returns a new block of 384 KiB to 1.25 MiB of incompressible
// bytes and its file name.
func (g *gcKill) block() (string, []byte) {
	g.blocks++
	n := 384<<10 + g.r.IntN(896<<10)
	return fmt.Sprintf("block-%03d", g.blocks), seeded(g.seed^uint64(g.blocks)<<32, n)
}

// push pushes a tar of files with a step record, as cairn push
// --instruction does (through the client library: a process start per
// call would cost a third of the test's time), and returns the layer.
func (g *gcKill) push(files map[string][]byte) *gcLayer {
	g.t.Helper()
	g.layers++
	l := &gcLayer{instruction: fmt.Sprintf("RUN make layer-%03d", g.layers), path: filepath.Join(g.dir, fmt.Sprintf("layer-%03d.tar", g.layers))}
	data := writeTar(g.t, l.path, files)
	l.digest = digest.FromBytes(data)
	ctx := context.Background()
	c := g.client()
	res, err := c.Push(ctx, bytes.NewReader(data), client.PushOptions{ExpectedDigest: l.digest, Size: int64(len(data))})
	if err != nil {
		g.t.Fatalf("push of %s: %v", l.path, err)
	}
	ref := &client.LayerRef{Digest: res.Digest, Size: res.Size, MediaType: res.MediaType}
	if _, err := c.RecordStep(ctx, "", client.Step{Instruction: l.instruction}, ref, nil); err != nil {
		g.t.Fatalf("recording the step of %s: %v", l.path, err)
	}
	return l
}

// client returns a client of the running server.
func (g *gcKill) client() *client.Client {
	g.t.Helper()
	if g.c == nil {
		c, err := client.Dial(context.Background(), g.s.addr)
		if err != nil {
			g.t.Fatal(err)
		}
		g.c = c
	}
	return g.c
}

// hangUp closes the client, and the registry clients' idle connections,
// before the server goes.
func (g *gcKill) hangUp() {
	if g.c != nil {
		g.c.Close()
		g.c = nil
	}
	g.tr.CloseIdleConnections()
}

// pushImage pushes an image of one or two layers (a block each, as an
// uncompressed tar) to kill/app:latest with go-containerregistry: the image
// latest named before goes untagged, and its manifest, config and layers
// are unreached.
func (g *gcKill) pushImage() {
	t := g.t
	t.Helper()
	var layers []v1.Layer
	for range 1 + g.r.IntN(2) {
		n, b := g.block()
		l, err := gzipLayer(tarOf(map[string][]byte{n: b}))
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, l)
	}
	img, err := ociImage(layers...)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(g.s.reg + "/kill/app:latest")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithTransport(g.tr)); err != nil {
		t.Fatalf("pushing kill/app:latest: %v", err)
	}
	im := &gcImage{}
	if im.digest, err = img.Digest(); err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	im.blobs = append(im.blobs, digest.Digest(cfg.String()))
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		im.blobs = append(im.blobs, digest.Digest(d.String()))
	}
	// The tar of each gzip layer, stored beside it, is unreached at once.
	for _, l := range layers {
		d, err := l.DiffID()
		if err != nil {
			t.Fatal(err)
		}
		if g.present(digest.Digest(d.String()), gcTar) {
			g.garbage[digest.Digest(d.String())] = gcTar
		}
	}
	if old := g.latest; old != nil {
		g.garbage[digest.Digest(old.digest.String())] = gcManifest
		for _, d := range old.blobs {
			g.garbage[d] = gcBlob
		}
	}
	g.latest = im
}

// pushLoose uploads a block to kill/app as a blob no manifest names.
func (g *gcKill) pushLoose() {
	g.t.Helper()
	_, b := g.block()
	repo, err := name.NewRepository(g.s.reg + "/kill/app")
	if err != nil {
		g.t.Fatal(err)
	}
	if err := remote.WriteLayer(repo, static.NewLayer(b, types.OCILayer), remote.WithTransport(g.tr)); err != nil {
		g.t.Fatalf("uploading a loose blob to kill/app: %v", err)
	}
	g.garbage[digest.FromBytes(b)] = gcBlob
}

// prune drops from the garbage what the server no longer has and returns
// how many digests went.
func (g *gcKill) prune() int {
	gone := 0
	for d, kind := range g.garbage {
		if !g.present(d, kind) {
			delete(g.garbage, d)
			gone++
		}
	}
	return gone
}

// present says whether the server has d: for a blob or manifest, whether
// a HEAD of it in kill/app answers 200 (true) or 404 (false), anything
// else failing the test; for a tar, whether it is a layer (cairn stat).
func (g *gcKill) present(d digest.Digest, kind gcKind) bool {
	t := g.t
	t.Helper()
	if kind == gcTar {
		_, err := g.client().Stat(context.Background(), d)
		if errors.Is(err, client.ErrNotFound) {
			return false
		} else if err != nil {
			t.Fatalf("stat %s: %v", d, err)
		}
		return true
	}
	what := "blobs"
	if kind == gcManifest {
		what = "manifests"
	}
	req, err := http.NewRequest(http.MethodHead, "http://"+g.s.reg+"/v2/kill/app/"+what+"/"+d.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", string(types.OCIManifestSchema1))
	res, err := (&http.Client{Transport: g.tr, Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("HEAD %s: %v", req.URL, err)
	}
	res.Body.Close()
	switch res.StatusCode {
	case http.StatusOK:
		return true
	case http.StatusNotFound:
		return false
	}
	t.Fatalf("HEAD %s: %s", req.URL, res.Status)
	return false
}

// wantLayers is the number of layers the server must count: the live API
// layers, latest's manifest, config and layers, and the unreached digests
// still there.
func (g *gcKill) wantLayers() int64 {
	return int64(len(g.live) + 1 + len(g.latest.blobs) + len(g.garbage))
}

// family pushes x = {a, b, c}, then y1 = {a, d} and y2 = {b, e}. x's
// pack holds a, b and c; y1's and y2's hold d and e (and the chunks where
// a and b end, which differ from x's). Removing x leaves its pack partly
// dead (c): it is rewritten into a pack of a and b, and removing y1 then
// leaves that one partly dead (a): rewritten again.
func (g *gcKill) family() (x *gcLayer, ys []*gcLayer) {
	na, a := g.block()
	nb, b := g.block()
	nc, c := g.block()
	nd, d := g.block()
	ne, e := g.block()
	x = g.push(map[string][]byte{na: a, nb: b, nc: c})
	return x, []*gcLayer{g.push(map[string][]byte{na: a, nd: d}), g.push(map[string][]byte{nb: b, ne: e})}
}

func (g *gcKill) solo() *gcLayer {
	na, a := g.block()
	nb, b := g.block()
	return g.push(map[string][]byte{na: a, nb: b})
}

// rm removes l, as cairn rm does, and drops it from the live layers.
func (g *gcKill) rm(l *gcLayer) {
	g.t.Helper()
	if err := g.client().Delete(context.Background(), l.digest); err != nil {
		g.t.Fatalf("rm %s (%s): %v", l.digest, l.instruction, err)
	}
	g.live = slices.DeleteFunc(g.live, func(m *gcLayer) bool { return m == l })
}

// churn gives the next round work: two new families whose x are removed
// (rewrites), and four older live layers removed (a y leaves a rewritten
// pack partly or wholly dead and frees its own; a solo frees its pack).
func (g *gcKill) churn() {
	var ys []*gcLayer
	for range 2 {
		x, fam := g.family()
		g.rm(x)
		ys = append(ys, fam...)
	}
	for range len(ys) {
		g.rm(g.live[g.r.IntN(len(g.live))])
	}
	g.live = append(g.live, ys...)
	g.pushImage()
	if g.r.IntN(2) == 0 {
		g.pushLoose()
	}
}

// measure runs an uncut collection on a copy of the store (the index
// directory, and the bucket on S3) and returns how long the gc client ran:
// the bound of the kill delays.
func (g *gcKill) measure(args []string) time.Duration {
	t, s := g.t, g.s
	g.hangUp()
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	twin := &server{t: t, backend: s.backend, dataDir: t.TempDir()}
	if err := os.CopyFS(twin.dataDir, os.DirFS(s.dataDir)); err != nil {
		t.Fatal(err)
	}
	if c := s.backend.s3; c != nil {
		cc := *c
		cc.bucket = "cairn-e2e-" + randomHex(6)
		twin.backend.s3 = &cc
		copyObjects(t, s.blobStore(), twin.blobStore())
	}
	twin.start()
	began := time.Now()
	var rep client.GCReport
	twin.okJSON(&rep, nil, args...)
	took := time.Since(began)
	if err := twin.stop(); err != nil {
		t.Fatalf("the twin server: %v\n%s", err, twin.log.String())
	}
	s.start()
	t.Logf("an uncut collection on a copy of the store: %v (%v in the server): %s", took.Round(time.Millisecond),
		rep.Duration.Round(time.Millisecond), gcSummary(rep))
	compacting := slices.Contains(args, "--compact-age")
	if rep.DeletedPacks == 0 || (rep.RewrittenPacks == 0 && !compacting) || (rep.CompactedPacks == 0 && compacting) || rep.DeletedLayers == 0 {
		t.Fatalf("the store gives the collection too little work: %s", gcSummary(rep))
	}
	return took
}

// copyObjects copies every object of src to dst.
func copyObjects(t *testing.T, src, dst backend.Store) {
	t.Helper()
	ctx := context.Background()
	err := src.List(ctx, "", func(info backend.Info) error {
		rc, err := src.Open(ctx, info.Key, 0, -1)
		if err != nil {
			return err
		}
		defer rc.Close()
		return dst.Put(ctx, info.Key, rc, info.Size)
	})
	if err != nil {
		t.Fatalf("copying the blob store: %v", err)
	}
}

// round runs a collection, SIGKILLs the server after a delay drawn in
// [0, bound], restarts it and checks the live layers. It returns where the
// kill landed ("before", "during: planning", "during: deleting", "during:
// rewriting" or "after" the collection) and, if the collection finished
// before the kill, how long the gc client ran.
func (g *gcKill) round(round int, bound time.Duration) (where string, took time.Duration) {
	t, s := g.t, g.s
	packsBefore := g.packKeys()
	args := gcArgs
	if round%2 == 1 {
		args = gcCompactArgs
	}
	cmd := exec.Command(cairnBin, append(slices.Clone(args), "--json")...)
	cmd.Env = append(os.Environ(), "CAIRN_SERVER="+s.addr)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	delay := time.Duration(g.r.Int64N(int64(bound) + 1))
	began := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	var ended time.Time
	go func() {
		err := cmd.Wait()
		ended = time.Now()
		done <- err
	}()
	var gcErr error
	finished := false
	timer := time.NewTimer(delay) // the deliberate random delay
	select {
	case gcErr = <-done:
		finished = true
		timer.Stop()
	case <-timer.C:
	}
	g.hangUp()
	killServer(t, s)
	if !finished {
		select {
		case gcErr = <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("round %d: cairn gc still running 30s after the server was killed", round)
		}
	}
	packsAfter := g.packKeys()
	deleted, written := 0, 0
	for k := range packsBefore {
		if !packsAfter[k] {
			deleted++
		}
	}
	for k := range packsAfter {
		if !packsBefore[k] {
			written++
		}
	}
	var what string
	switch {
	case gcErr == nil:
		var rep client.GCReport
		if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
			t.Fatalf("round %d: cairn gc --json: %v\n%s", round, err, stdout.String())
		}
		where, what, took = "after", gcSummary(rep), ended.Sub(began)
	case finished:
		t.Fatalf("round %d: cairn gc failed before the kill: %v\n%s", round, gcErr, stderr.String())
	case strings.Contains(stderr.String(), "connection refused") || strings.Contains(stderr.String(), "server preface") ||
		strings.Contains(stderr.String(), "write tcp"):
		// No server, or one gone before it read the request.
		where, what = "before", firstLine(stderr.String())
		if deleted > 0 || written > 0 {
			t.Errorf("round %d: the gc client found no server, yet the packs changed", round)
		}
	default: // the request went out, the answer never came
		where, what = "during: planning", firstLine(stderr.String())
		switch {
		case written > 0:
			where = "during: rewriting"
		case deleted > 0:
			where = "during: deleting"
		}
	}
	s.start()
	unreached := len(g.garbage)
	gone := g.prune()
	if where == "during: planning" && gone > 0 {
		where = "during: layers"
	}
	if where == "before" && gone > 0 {
		t.Errorf("round %d: the gc client found no server, yet %d unreached digests went", round, gone)
	}
	t.Logf("round %2d: killed %v into [0, %v]: %s the collection (%s); packs: %d deleted, %d written; unreached registry digests: %d of %d gone",
		round, delay.Round(time.Millisecond), bound.Round(time.Millisecond), where, what, deleted, written, gone, unreached)
	g.check(fmt.Sprintf("round %d", round))
	return where, took
}

// firstLine returns the first line of s.
func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}

// packKeys returns the keys of the packs in the blob store.
func (g *gcKill) packKeys() map[string]bool {
	keys := map[string]bool{}
	for _, p := range packs(g.t, g.s.blobStore()) {
		keys[p.Key] = true
	}
	return keys
}

// killServer sends SIGKILL to the server and waits for it to exit; it fails
// the test unless the SIGKILL is what ended it.
func killServer(t *testing.T, s *server) {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGKILL)
	waitKilled(t, s)
}

// check fails the test unless the server counts the live layers (see
// wantLayers), each pulls back with its digest, kill/app:latest pulls back
// whole, and a verify of the whole store finds nothing wrong. It uses the
// client library (the CLI costs a process start per call); the last check
// uses the CLI.
func (g *gcKill) check(when string) {
	t := g.t
	t.Helper()
	ctx := context.Background()
	c := g.client()
	st, err := c.Stats(ctx)
	if err != nil {
		t.Fatalf("%s: stat: %v", when, err)
	}
	if want := g.wantLayers(); st.Layers != want {
		t.Errorf("%s: the server counts %d layers, want %d: the %d live API layers, the %d of kill/app:latest and the %d unreached registry digests still there",
			when, st.Layers, want, len(g.live), 1+len(g.latest.blobs), len(g.garbage))
	}
	g.checkLatest(when)
	for _, l := range g.live {
		h := digest.SHA256.Digester()
		if _, err := c.Pull(ctx, l.digest, h.Hash(), client.PullOptions{}); err != nil {
			t.Errorf("%s: live layer %s (%s): %v", when, l.digest, l.instruction, err)
		} else if h.Digest() != l.digest {
			t.Errorf("%s: live layer %s (%s) pulled back with digest %s", when, l.digest, l.instruction, h.Digest())
		}
	}
	rep, err := c.Verify(ctx, 0)
	if err != nil {
		t.Fatalf("%s: verify: %v", when, err)
	}
	if rep.NewlyQuarantined != 0 || len(rep.Quarantined) != 0 || len(rep.DamagedLayers) != 0 || len(rep.DamagedSteps) != 0 || len(rep.Problems) != 0 {
		t.Errorf("%s: verify: %+v", when, rep)
	}
}

// checkCLI is check through the CLI: cairn stat, cairn pull -o of every
// live layer, cairn verify.
func (g *gcKill) checkCLI(when string) {
	t, s := g.t, g.s
	t.Helper()
	var st client.Stats
	s.okJSON(&st, nil, "stat")
	if want := g.wantLayers(); st.Layers != want {
		t.Errorf("%s: the server counts %d layers, want %d: the %d live API layers, the %d of kill/app:latest and the %d unreached registry digests still there",
			when, st.Layers, want, len(g.live), 1+len(g.latest.blobs), len(g.garbage))
	}
	out := filepath.Join(g.dir, "pulled")
	for _, l := range g.live {
		if r := s.cli(nil, "pull", l.digest.String(), "-o", out); r.code != 0 {
			t.Errorf("%s: live layer %s (%s): %v", when, l.digest, l.instruction, r)
			continue
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if d := digest.FromBytes(b); d != l.digest {
			t.Errorf("%s: live layer %s (%s) pulled back as %d bytes with digest %s", when, l.digest, l.instruction, len(b), d)
		}
	}
	if r := s.cli(nil, "verify"); r.code != 0 {
		t.Errorf("%s: %v", when, r)
	}
}

// checkLatest fails the test unless kill/app:latest is the image last
// pushed there and pulls back whole (validate.Image reads every blob).
func (g *gcKill) checkLatest(when string) {
	t := g.t
	t.Helper()
	ref, err := name.ParseReference(g.s.reg + "/kill/app:latest")
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref, remote.WithTransport(g.tr))
	if err != nil {
		t.Errorf("%s: kill/app:latest: %v", when, err)
		return
	}
	if d, err := img.Digest(); err != nil || d != g.latest.digest {
		t.Errorf("%s: kill/app:latest is %v (%v), want %v", when, d, err, g.latest.digest)
	}
	if err := validate.Image(img); err != nil {
		t.Errorf("%s: kill/app:latest does not validate: %v", when, err)
	}
}

// wantClean fails the test unless a dry run plans nothing: no pack to
// delete, rewrite, mark or delete after its mark, no dead chunk, no
// unreached layer or untagged manifest.
func (g *gcKill) wantClean(when string) {
	var plan client.GCReport
	g.s.okJSON(&plan, nil, append(slices.Clone(gcFinishArgs), "--dry-run")...)
	if plan.DeletePacks != 0 || plan.RewritePacks != 0 || plan.OrphanPacks != 0 || plan.DuePacks != 0 ||
		plan.WaitingPacks != 0 || plan.DeadChunks != 0 || plan.UnreachedLayers != 0 || plan.UntaggedManifests != 0 {
		g.t.Errorf("dry run %s: %s; want nothing planned", when, gcSummary(plan))
	}
}

// gcSummary is the gist of a collection's report.
func gcSummary(r client.GCReport) string {
	return fmt.Sprintf("%d unreached layers (%d untagged manifests), %d deleted; %d packs, %d chunks (%d dead); plan: %d delete, %d rewrite, %d compact, %d orphans, %d due, %d waiting; done: %d deleted, %d rewritten, %d compacted, %d marked, %d chunks moved, %d skipped",
		r.UnreachedLayers, r.UntaggedManifests, r.DeletedLayers, r.Packs, r.Chunks, r.DeadChunks, r.DeletePacks, r.RewritePacks, r.CompactPacks, r.OrphanPacks, r.DuePacks, r.WaitingPacks,
		r.DeletedPacks, r.RewrittenPacks, r.CompactedPacks, r.MarkedPacks, r.MovedChunks, len(r.Skipped))
}
