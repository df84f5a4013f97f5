package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/opencontainers/go-digest"

	"github.com/cairnbuild/cairn/client"
)

// TestGCQuota is issue 15's quota test through the real fronts: while
// `cairn gc --max-size 24MiB --keep-tags stable --grace 0 --pack-grace 0
// --untagged-max-age 0` runs again and again (subprocesses, in a goroutine),
// two writers store five times the quota of new, incompressible bytes,
// round by round (each round a layer through the API and an image through
// the registry at once, so that the last pushes of both fronts are the
// most recently used roots):
//
//   - the gRPC API (the client library, as cairn push --instruction does):
//     each round a layer of two files, the previous round's new block and a
//     new one, with a step record;
//   - the registry (go-containerregistry's remote.Write): images of one or
//     two gzip layers (as crane writes them) and a config in two repositories, mostly
//     under a new tag r<N>, every fourth round moving the tag latest (the
//     old manifest goes untagged); a "deps" layer changes every third
//     round and is shared meanwhile. The protected tag stable is pushed
//     first: the least recently used root of all, which the quota must
//     keep.
//
// With no grace period a collection may take a blob between a client's
// HEAD and its manifest PUT: the PUT then fails with MANIFEST_BLOB_UNKNOWN,
// and the writer pushes the image again, as a CI job's retry would. The
// API has the same window: a chunk FindMissingChunks found stored may be
// collected before the commit, which then fails with FAILED_PRECONDITION
// ("chunk ... has not been uploaded"), and the writer pushes the layer
// again. (The grace period, an hour by default, is what closes both
// windows.) The retries are counted and logged.
//
// After the writers, two more collections; then the packs in the blob
// store hold at most 1.1× the quota (and at least half of it: the quota
// evicts what it must, not everything), the last two API layers pull back
// with their digests and their steps hit, the last two tags and stable
// pull back whole (remote.Image and validate.Image; crane pull of the
// newest) and cairn verify passes; the same after `cairn reindex`.
func TestGCQuota(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 120 MiB through both fronts while collections run (half a minute per backend): full-size runs only")
	}
	crane := tool(t, "crane")
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) { testGCQuota(t, b, crane) })
	}
}

// gcQuota is the quota of TestGCQuota, as its gc flag says.
const gcQuota = 24 << 20

var gcQuotaArgs = []string{"gc", "--max-size", "24MiB", "--keep-tags", "stable", "--grace", "0", "--pack-grace", "0", "--untagged-max-age", "0"}

// quotaLayer is a layer the API writer pushed.
type quotaLayer struct {
	instruction string
	digest      digest.Digest
}

// quotaImage is an image the registry writer pushed under a tag.
type quotaImage struct {
	ref    string // host/repo:tag
	digest v1.Hash
}

// quotaRun is the state of one backend's run.
type quotaRun struct {
	t    *testing.T
	s    *server
	seed uint64
	tr   *http.Transport // the registry clients'
	dir  string
	// The API writer's: its draws, the last new block, the layers pushed,
	// the new bytes written and the pushes done again (after
	// FAILED_PRECONDITION).
	apiRand    *mrand.Rand
	apiPrev    []byte
	layers     []quotaLayer
	apiBytes   int64
	apiRetries int
	// The registry writer's: its draws, the deps layer, stable and the
	// images pushed under a tag after it, the new bytes written and the
	// pushes done again (after MANIFEST_BLOB_UNKNOWN).
	regRand  *mrand.Rand
	deps     v1.Layer
	stable   quotaImage
	images   []quotaImage
	regBytes int64
	retries  int
}

func testGCQuota(t *testing.T, b backendConfig, crane string) {
	start := time.Now()
	seed := uint64(time.Now().UnixNano())
	q := &quotaRun{t: t, s: startServer(t, b), seed: seed, tr: http.DefaultTransport.(*http.Transport).Clone(), dir: t.TempDir(),
		apiRand: mrand.New(mrand.NewPCG(seed, 1)), regRand: mrand.New(mrand.NewPCG(seed, 2))}
	defer q.tr.CloseIdleConnections()
	t.Logf("seed %d", seed)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := client.Dial(ctx, q.s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// The collections, one after the other until the writers are done.
	stop := make(chan struct{})
	gcDone := make(chan gcLoopStats, 1)
	go func() { gcDone <- q.gcLoop(ctx, stop) }()

	// The writers go round by round, a layer through the API and an image
	// through the registry at once, so that neither front's last pushes
	// are older than the other's (the quota keeps the most recently used).
	var errs []error
	q.deps = q.regLayer("deps-0", 3<<19+q.regRand.IntN(1<<20))
	img, err := ociImage(q.deps, q.regLayer("app-0", 1<<20+q.regRand.IntN(1<<20)))
	if err != nil {
		t.Fatal(err)
	}
	if q.stable, err = q.write(ctx, "quota/app:stable", img); err != nil {
		errs = append(errs, err)
	}
	for round := 1; len(errs) == 0 && q.apiBytes+q.regBytes < 5*gcQuota; round++ {
		var wg sync.WaitGroup
		var apiErr, regErr error
		wg.Add(2)
		go func() { defer wg.Done(); apiErr = q.apiRound(ctx, c, round) }()
		go func() { defer wg.Done(); regErr = q.registryRound(ctx, round) }()
		wg.Wait()
		for _, err := range []error{apiErr, regErr} {
			if err != nil {
				errs = append(errs, fmt.Errorf("round %d: %w", round, err))
			}
		}
	}
	close(stop)
	st := <-gcDone
	for _, err := range append(errs, st.errs...) {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	wrote := time.Since(start)
	t.Logf("wrote %.1f MiB through the API (%d layers; %d pushes retried after FAILED_PRECONDITION) and %.1f MiB through the registry (%d tags and stable; %d pushes retried after MANIFEST_BLOB_UNKNOWN) in %v, %.1f× the quota, beside %d collections: %d layers and %d manifests evicted, %.1f MiB estimated, %d packs skipped (written to again since the plan); packs held at most %.1f MiB when a collection began",
		mib(q.apiBytes), len(q.layers), q.apiRetries, mib(q.regBytes), len(q.images), q.retries, wrote.Round(time.Millisecond),
		float64(q.apiBytes+q.regBytes)/gcQuota, st.runs, st.evictedLayers, st.evictedManifests, mib(st.evictedBytes), st.skipped, mib(st.maxStored))
	if st.runs < 3 {
		t.Errorf("only %d collections ran beside the writers", st.runs)
	}

	// Two more collections: the first takes what the last evictions left,
	// the second what the first's rewrites emptied.
	for range 2 {
		var rep client.GCReport
		q.s.okJSON(&rep, nil, gcQuotaArgs...)
		t.Logf("gc after the writers: %.1f MiB stored, evicted %d layers and %d manifests (%.1f MiB); %s",
			mib(rep.StoredBytes), rep.EvictedLayers, rep.EvictedManifests, mib(rep.EvictedBytes), gcSummary(rep))
		if len(rep.Skipped) > 0 {
			t.Errorf("gc after the writers skipped: %q", rep.Skipped)
		}
	}
	q.check(crane, "after the collections")
	q.s.reindex()
	q.tr.CloseIdleConnections()
	q.check(crane, "after the reindex")
	t.Logf("done in %v", time.Since(start).Round(time.Millisecond))
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// randBlock returns n incompressible bytes drawn from the seed and key.
func (q *quotaRun) randBlock(key string, n int) []byte {
	var s [32]byte
	copy(s[:], fmt.Sprintf("%d/%s", q.seed, key))
	b := make([]byte, n)
	mrand.NewChaCha8(s).Read(b)
	return b
}

// tarOf returns files as a deterministic tar.
func tarOf(files map[string][]byte) []byte {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, n := range names {
		hdr := &tar.Header{Name: n, Mode: 0o644, Size: int64(len(files[n])), ModTime: mtime, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			panic(err)
		}
		tw.Write(files[n]) // a bytes.Buffer does not fail
	}
	tw.Close()
	return buf.Bytes()
}

// gcRetries is how many times a writer pushes the same thing before the
// test gives up: with collections back to back and no grace period, a push
// loses the race now and then (see TestGCQuota).
const gcRetries = 10

// apiRound pushes round i's layer through the gRPC API: the previous
// round's new block and a new block of 1 to 2 MiB, recorded as a step.
func (q *quotaRun) apiRound(ctx context.Context, c *client.Client, i int) error {
	block := q.randBlock(fmt.Sprintf("api-%d", i), 1<<20+q.apiRand.IntN(1<<20))
	files := map[string][]byte{"new": block}
	if q.apiPrev != nil {
		files["prev"] = q.apiPrev
	}
	data := tarOf(files)
	l := quotaLayer{instruction: fmt.Sprintf("RUN make api-%03d", i), digest: digest.FromBytes(data)}
	for attempt := 1; ; attempt++ {
		err := q.pushStep(ctx, c, data, l)
		if err == nil {
			break
		}
		// A chunk the push found stored was collected before the commit
		// (no grace period): the commit fails with FAILED_PRECONDITION
		// and the job pushes again.
		if attempt < gcRetries && errors.Is(err, client.ErrFailedPrecondition) {
			q.apiRetries++
			q.t.Logf("API layer %d, attempt %d: %v; pushing again", i, attempt, err)
			continue
		}
		return fmt.Errorf("API layer %d, attempt %d: %w", i, attempt, err)
	}
	q.layers = append(q.layers, l)
	q.apiBytes += int64(len(block))
	q.apiPrev = block
	return nil
}

// pushStep pushes a layer and records its step.
func (q *quotaRun) pushStep(ctx context.Context, c *client.Client, data []byte, l quotaLayer) error {
	res, err := c.Push(ctx, bytes.NewReader(data), client.PushOptions{ExpectedDigest: l.digest, Size: int64(len(data))})
	if err != nil {
		return fmt.Errorf("push: %w", err)
	}
	ref := &client.LayerRef{Digest: res.Digest, Size: res.Size, MediaType: res.MediaType}
	if _, err := c.RecordStep(ctx, "", client.Step{Instruction: l.instruction}, ref, nil); err != nil {
		return fmt.Errorf("recording the step: %w", err)
	}
	return nil
}

// regLayer is a gzip layer of a new block of n bytes, counted as written.
func (q *quotaRun) regLayer(key string, n int) v1.Layer {
	b := q.randBlock(key, n)
	q.regBytes += int64(n)
	l, err := gzipLayer(tarOf(map[string][]byte{key: b}))
	if err != nil {
		panic(err) // from bytes in memory: cannot fail
	}
	return l
}

// registryRound pushes round i's image through the registry, to
// quota/app or quota/tools under the tag r<i>, or every fourth round
// latest: an app layer (1 to 2 MiB, new every round) and, every other
// round, the deps layer (1.5 to 2.5 MiB, new every third round).
func (q *quotaRun) registryRound(ctx context.Context, i int) error {
	if i%3 == 0 {
		q.deps = q.regLayer(fmt.Sprintf("deps-%d", i), 3<<19+q.regRand.IntN(1<<20))
	}
	layers := []v1.Layer{q.regLayer(fmt.Sprintf("app-%d", i), 1<<20+q.regRand.IntN(1<<20))}
	if i%2 == 0 {
		layers = append([]v1.Layer{q.deps}, layers...)
	}
	img, err := ociImage(layers...)
	if err != nil {
		return err
	}
	repo, tag := []string{"quota/app", "quota/tools"}[i%2], fmt.Sprintf("r%d", i)
	if i%4 == 0 {
		tag = "latest"
	}
	pushed, err := q.write(ctx, repo+":"+tag, img)
	if err != nil {
		return err
	}
	q.images = append(q.images, pushed)
	return nil
}

// gzipLayer is a gzip layer of the tar data, compressed as crane does
// (go-containerregistry's default: compress/gzip at BestSpeed), which the
// registry stores as the tar and the encoder that rebuilds it.
// validate.Layer reads layers as gzip: an uncompressed one fails it.
func gzipLayer(data []byte) (v1.Layer, error) {
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer))
}

// ociImage is an OCI image of layers.
func ociImage(layers ...v1.Layer) (v1.Image, error) {
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	return mutate.AppendLayers(base, layers...)
}

// write pushes img to ref (repo:tag) with remote.Write, again after a
// MANIFEST_BLOB_UNKNOWN (a collection took a blob between the client's
// HEAD or upload and its manifest PUT), at most gcRetries times.
func (q *quotaRun) write(ctx context.Context, ref string, img v1.Image) (quotaImage, error) {
	full := q.s.reg + "/" + ref
	r, err := name.ParseReference(full)
	if err != nil {
		return quotaImage{}, err
	}
	d, err := img.Digest()
	if err != nil {
		return quotaImage{}, err
	}
	for attempt := 1; ; attempt++ {
		err := remote.Write(r, img, remote.WithContext(ctx), remote.WithTransport(q.tr))
		if err == nil {
			return quotaImage{ref: full, digest: d}, nil
		}
		var te *transport.Error
		if attempt < gcRetries && errors.As(err, &te) && slices.ContainsFunc(te.Errors, func(e transport.Diagnostic) bool {
			return e.Code == transport.ManifestBlobUnknownErrorCode
		}) {
			q.retries++
			q.t.Logf("push of %s, attempt %d: %v; pushing again", ref, attempt, err)
			continue
		}
		return quotaImage{}, fmt.Errorf("push of %s, attempt %d: %w", ref, attempt, err)
	}
}

// gcLoopStats is what the collections beside the writers did.
type gcLoopStats struct {
	runs                                          int
	evictedLayers, evictedManifests, evictedBytes int64
	maxStored                                     int64
	skipped                                       int
	errs                                          []error
}

// gcLoop runs cairn gc (a subprocess, with gcQuotaArgs) until stop is
// closed, with a pause of 250 to 750 ms between runs: back to back, a
// collection of a small store takes tens of milliseconds, and with no
// grace period every push lost the race against one (a blob uploaded, then
// collected before the manifest PUT) ten times in a row.
func (q *quotaRun) gcLoop(ctx context.Context, stop <-chan struct{}) gcLoopStats {
	var st gcLoopStats
	r := mrand.New(mrand.NewPCG(q.seed, 3))
	for first := true; ; first = false {
		pause := time.Duration(250+r.IntN(500)) * time.Millisecond
		if first {
			pause = 0
		}
		select {
		case <-stop:
			return st
		case <-ctx.Done():
			return st
		case <-time.After(pause): // the deliberate pause between runs
		}
		cmd := exec.CommandContext(ctx, cairnBin, append(slices.Clone(gcQuotaArgs), "--json")...)
		cmd.Env = append(os.Environ(), "CAIRN_SERVER="+q.s.addr)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			if ctx.Err() == nil {
				st.errs = append(st.errs, fmt.Errorf("cairn gc, run %d: %v\n%s", st.runs+1, err, stderr.String()))
			}
			return st
		}
		var rep client.GCReport
		if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
			st.errs = append(st.errs, fmt.Errorf("cairn gc --json: %v\n%s", err, stdout.String()))
			return st
		}
		// A pack a push wrote to again since the plan is skipped: the
		// deleting transaction's check at work, not a failure.
		st.skipped += len(rep.Skipped)
		st.runs++
		st.evictedLayers += rep.EvictedLayers
		st.evictedManifests += rep.EvictedManifests
		st.evictedBytes += rep.EvictedBytes
		st.maxStored = max(st.maxStored, rep.StoredBytes)
	}
}

// check fails the test unless the store is within 10 % of the quota (and
// above half of it), the last two API layers pull back with their digests
// and their steps hit, the last two tags and stable pull back whole and
// validate (the newest with crane too), and cairn verify passes.
func (q *quotaRun) check(crane, when string) {
	t, s := q.t, q.s
	t.Helper()
	stored := packBytes(t, s)
	var st client.Stats
	s.okJSON(&st, nil, "stat")
	t.Logf("%s: packs hold %.1f MiB (quota %d MiB); %d layers, %d steps, %d manifests, %d tags stored", when, mib(stored), gcQuota>>20,
		st.Layers, st.Steps, st.Manifests, st.Tags)
	if stored > gcQuota*11/10 {
		t.Errorf("%s: the packs hold %d bytes, over 1.1× the quota (%d)", when, stored, gcQuota)
	}
	if stored < gcQuota/2 {
		t.Errorf("%s: the packs hold %d bytes, under half the quota (%d): evicted more than the quota asks", when, stored, gcQuota)
	}
	out := filepath.Join(q.dir, "pulled")
	for _, l := range q.layers[len(q.layers)-2:] {
		if r := s.cli(nil, "pull", l.digest.String(), "-o", out); r.code != 0 {
			t.Errorf("%s: recent API layer %s (%s): %v", when, l.digest, l.instruction, r)
			continue
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if d := digest.FromBytes(b); d != l.digest {
			t.Errorf("%s: recent API layer %s (%s) pulled back as %d bytes with digest %s", when, l.digest, l.instruction, len(b), d)
		}
		if r := s.cli(nil, "lookup", "--instruction", l.instruction); r.code != 0 {
			t.Errorf("%s: the step of recent API layer %s: %v", when, l.digest, r)
		}
	}
	for _, im := range append([]quotaImage{q.stable}, q.images[len(q.images)-2:]...) {
		ref, err := name.ParseReference(im.ref)
		if err != nil {
			t.Fatal(err)
		}
		img, err := remote.Image(ref, remote.WithTransport(q.tr))
		if err != nil {
			t.Errorf("%s: %s: %v", when, im.ref, err)
			continue
		}
		if d, err := img.Digest(); err != nil || d != im.digest {
			t.Errorf("%s: %s is %v (%v), want %v", when, im.ref, d, err, im.digest)
		}
		if err := validate.Image(img); err != nil {
			t.Errorf("%s: %s does not validate: %v", when, im.ref, err)
		}
	}
	newest := q.images[len(q.images)-1]
	run(t, crane, "pull", "--insecure", newest.ref, filepath.Join(q.dir, "crane.tar"))
	if got := strings.TrimSpace(run(t, crane, "digest", "--insecure", newest.ref)); got != newest.digest.String() {
		t.Errorf("%s: crane digest %s: %s, want %s", when, newest.ref, got, newest.digest)
	}
	if r := s.cli(nil, "verify"); r.code != 0 {
		t.Errorf("%s: %v", when, r)
	}
}
