package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cairnbuild/cairn/client"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// TestKillLoop is the crash loop: rounds of concurrent pushes (new layers,
// layers sharing chunks, layers pushed again) and deletes against one
// `cairn serve`, each round ended by a SIGKILL at a moment drawn from a
// seed (after the k-th chunk byte, commit, delete or acknowledged
// operation, sometimes a few random milliseconds after it), then a restart
// on the same data directory and a check of what survived:
//
//   - every layer ListLayers reports is one the test pushed, has its size,
//     and pulls back whole (by PullLayer, or chunk by chunk with a chunk
//     cache directory) hashing to its digest;
//   - every push acknowledged before the kill is listed, and every delete
//     acknowledged before it is not; an interrupted one may have gone
//     either way, and the next round starts from what the server lists;
//   - of a layer the round pushed or deleted that is not listed, every
//     chunk FindMissingChunks says the server has comes back whole from
//     GetChunks (a push would skip those);
//   - StatLayer agrees with ListLayers, and a step lookup hits only for a
//     listed layer, always for a listed layer whose RecordStep was
//     acknowledged.
//
// Every operation must succeed until the kill, and fail only as
// "unavailable" after it. Pushes go four at a time, by client.Push (from a
// pipe-like or a seekable reader), by PushLayer (the server chunks) and by
// the chunk API. The layers: blocks of random and of text-like bytes shared
// between layers (so that pushes find chunks stored by others, and deletes
// drop counts of chunks others still use), two layers larger than a pack
// (4 MiB), a tiny one, an empty one, and (not on MinIO) a "confetti" layer
// of more than 16000 distinct tiny chunks pushed through the chunk API, so
// that its commit and its delete span several index transactions.
//
// The seed is logged; CAIRN_E2E_SEED=<seed> replays the same layers and
// rounds, as far as timing lets it: a kill can cut off other operations in
// a replay, and the rounds after it then start from another state. The
// loop runs 20 rounds (5 with -short), fewer on a machine too slow to do
// them in killLoopBudget; CAIRN_E2E_KILL_ROUNDS=<n> runs n rounds, however
// long they take.
func TestKillLoop(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("CAIRN_E2E_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("CAIRN_E2E_SEED=%q: %v", v, err)
		}
	}
	t.Logf("seed %d (replay with CAIRN_E2E_SEED=%d)", seed, seed)
	rounds := 20
	if testing.Short() {
		rounds = 5
	}
	bs := backends(t)
	budget := killLoopBudget / time.Duration(len(bs))
	if v := os.Getenv("CAIRN_E2E_KILL_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("CAIRN_E2E_KILL_ROUNDS=%q: want a positive number", v)
		}
		rounds, budget = n, 0 // a soak: no time bound
	}
	for _, b := range bs {
		t.Run(b.name, func(t *testing.T) { testKillLoop(t, b, seed, rounds, budget) })
	}
}

// What the test knows of a layer's presence on the server.
type presence int

const (
	absent  presence = iota // never pushed, or its delete was acknowledged
	present                 // a push of it was acknowledged
	unknown                 // an operation on it was cut off by the kill
)

// loopLayer is one layer of the loop's fixed set.
type loopLayer struct {
	id     int
	kind   string   // "blocks", "tiny", "empty" or "confetti"
	parts  [][]byte // the content, back to back
	digest digest.Digest
	size   int64
	// confetti layers are pushed as parts, one chunk each, through the
	// chunk API; the others as a stream the client or the server chunks.
	confetti bool

	expect presence
	// stepHit: a RecordStep for the layer was acknowledged and no delete
	// of it since, so while it is listed its step must hit.
	stepHit bool

	ids []string // its chunks' digests, once chunkIDs has cut them
}

// chunkIDs returns the digests of l's chunks as the client (and the
// server) cut them, or of its parts for a confetti layer.
func (l *loopLayer) chunkIDs(t *testing.T) []string {
	if l.ids == nil {
		if l.confetti {
			for _, p := range l.parts {
				l.ids = append(l.ids, client.ChunkDigest(p).String())
			}
		} else {
			l.ids = append([]string{}, chunkDigests(t, bytes.Join(l.parts, nil))...)
		}
	}
	return l.ids
}

func (l *loopLayer) reader() io.Reader {
	rs := make([]io.Reader, len(l.parts))
	for i, p := range l.parts {
		rs[i] = bytes.NewReader(p)
	}
	return io.MultiReader(rs...)
}

func (l *loopLayer) step() client.Step {
	return client.Step{Instruction: fmt.Sprintf("RUN build layer %d", l.id)}
}

func (l *loopLayer) String() string {
	return fmt.Sprintf("layer %d (%s, %d bytes, %s)", l.id, l.kind, l.size, l.digest.Encoded()[:12])
}

// makeLoopLayers builds the loop's layers from r; the confetti layer only
// if confetti is set.
func makeLoopLayers(r *mrand.Rand, confetti bool) []*loopLayer {
	nBlocks, nLayers, minBlock, maxBlock, maxBlocksPerLayer, bigLayer, confettiChunks := 16, 11, 256<<10, 3<<19, 5, 5<<20, 17000
	if testing.Short() {
		nBlocks, nLayers, minBlock, maxBlock, maxBlocksPerLayer, bigLayer, confettiChunks = 12, 7, 128<<10, 1<<20, 5, 9<<19, 16500
	}
	words := make([][]byte, 300)
	for i := range words {
		w := make([]byte, 2+r.IntN(9))
		for j := range w {
			w[j] = byte('a' + r.IntN(26))
		}
		words[i] = w
	}
	blocks := make([][]byte, nBlocks)
	for i := range blocks {
		n := minBlock + r.IntN(maxBlock-minBlock)
		if i%2 == 0 {
			blocks[i] = randomLoopBytes(r, n)
		} else {
			blocks[i] = textLoopBytes(r, words, n)
		}
	}
	var layers []*loopLayer
	add := func(kind string, parts [][]byte) *loopLayer {
		l := &loopLayer{id: len(layers), kind: kind, parts: parts}
		h := sha256.New()
		for _, p := range parts {
			h.Write(p)
			l.size += int64(len(p))
		}
		l.digest = digest.NewDigest(digest.SHA256, h)
		layers = append(layers, l)
		return l
	}
	for i := range nLayers {
		// A head of its own (the chunker cuts the shared blocks the same
		// way again after it), shared blocks, maybe one twice, a tail of
		// its own.
		parts := [][]byte{randomLoopBytes(r, 1+r.IntN(8<<10))}
		size := len(parts[0])
		for n := 1 + r.IntN(maxBlocksPerLayer); n > 0 || (i < 2 && size < bigLayer); n-- {
			b := blocks[r.IntN(len(blocks))]
			parts = append(parts, b)
			size += len(b)
		}
		parts = append(parts, randomLoopBytes(r, r.IntN(256<<10)))
		add("blocks", parts)
	}
	add("tiny", [][]byte{randomLoopBytes(r, 1+r.IntN(60<<10))})
	add("empty", nil)
	if !confetti {
		return layers
	}
	// More distinct chunks than the core puts in one index transaction
	// (16000 today): the commit and the delete are split into several.
	chunks := make([][]byte, confettiChunks)
	for i := range chunks {
		c := randomLoopBytes(r, 24+r.IntN(72))
		binary.LittleEndian.PutUint64(c, uint64(i)) // all distinct
		chunks[i] = c
	}
	add("confetti", chunks).confetti = true
	return layers
}

func randomLoopBytes(r *mrand.Rand, n int) []byte {
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b[:n:n]
}

// textLoopBytes is n bytes of words and newlines: compressible, unlike
// randomLoopBytes.
func textLoopBytes(r *mrand.Rand, words [][]byte, n int) []byte {
	b := make([]byte, 0, n+16)
	for len(b) < n {
		b = append(b, words[r.IntN(len(words))]...)
		if r.IntN(10) == 0 {
			b = append(b, '\n')
		} else {
			b = append(b, ' ')
		}
	}
	return b[:n:n]
}

// loopOp is one operation of a round, and what came of it.
type loopOp struct {
	layer  *loopLayer
	delete bool
	// For a push: "client" (client.Push from a reader that cannot seek),
	// "seekable" (client.Push from one that can: a layer the server has
	// may take the short way, by digest), "stream" (PushLayer) or
	// "chunks" (FindMissingChunks, PutChunks, CommitLayer).
	method string
	record bool // for a push: RecordStep after it

	started, acked, recorded bool
	err                      error // the error that ended it
	errAfterKill             bool  // err is "unavailable", after the kill was sent
}

func (o *loopOp) String() string {
	if o.delete {
		return "delete " + o.layer.String()
	}
	return fmt.Sprintf("push (%s) %v", o.method, o.layer)
}

// killSwitch sends the round's SIGKILL when the count of one kind of event
// reaches a threshold. The events come from gRPC interceptors on the
// pushers' connection, so the kill lands at a chosen point of the traffic:
// "bytes" (chunk and layer data sent, counted before each message goes
// out), "commit" (a CommitLayer call, or the end of a PushLayer stream,
// about to go out), "delete" (a DeleteLayer call about to go out) and
// "ack" (operations acknowledged).
type killSwitch struct {
	kind  string
	at    int64
	delay time.Duration // 0: kill before the event proceeds; else this long after it, from another goroutine
	proc  *os.Process

	count atomic.Int64
	fired atomic.Bool
	once  sync.Once
	what  string // what fired the kill; read after fire returns
}

func (k *killSwitch) String() string {
	s := fmt.Sprintf("kill at %s #%d", k.kind, k.at)
	if k.delay > 0 {
		s += fmt.Sprintf(" + %v", k.delay.Round(10*time.Microsecond))
	}
	return s
}

func (k *killSwitch) event(kind string, n int64) {
	if kind != k.kind || n <= 0 || k.fired.Load() {
		return
	}
	c := k.count.Add(n)
	if c-n >= k.at || c < k.at {
		return
	}
	what := fmt.Sprintf("%s #%d", kind, c)
	if k.delay == 0 {
		k.fire(what)
		return
	}
	// The delay is only where the kill lands, never what orders the
	// test's steps: the round waits for its operations, then fires
	// itself if this has not yet.
	go func() {
		time.Sleep(k.delay)
		k.fire(fmt.Sprintf("%s + %v", what, k.delay.Round(10*time.Microsecond)))
	}()
}

// fire sends SIGKILL once; the first caller's reason is kept.
func (k *killSwitch) fire(what string) {
	k.once.Do(func() {
		k.what = what
		k.fired.Store(true)
		k.proc.Signal(syscall.SIGKILL)
	})
}

func (k *killSwitch) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	switch req.(type) {
	case *cairnv1.CommitLayerRequest:
		k.event("commit", 1)
	case *cairnv1.DeleteLayerRequest:
		k.event("delete", 1)
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

func (k *killSwitch) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, err
	}
	return &countingStream{ClientStream: s, k: k, pushLayer: method == cairnv1.LayerService_PushLayer_FullMethodName}, nil
}

type countingStream struct {
	grpc.ClientStream
	k         *killSwitch
	pushLayer bool
}

func (s *countingStream) SendMsg(m any) error {
	switch m := m.(type) {
	case *cairnv1.PutChunksRequest:
		s.k.event("bytes", int64(len(m.GetData())))
	case *cairnv1.PushLayerRequest:
		s.k.event("bytes", int64(len(m.GetData())))
	}
	return s.ClientStream.SendMsg(m)
}

func (s *countingStream) CloseSend() error {
	if s.pushLayer {
		s.k.event("commit", 1)
	}
	return s.ClientStream.CloseSend()
}

// killLoop is the state of one run of the loop.
type killLoop struct {
	t      *testing.T
	s      *server
	seed   uint64
	r      *mrand.Rand // the current round's draws
	layers []*loopLayer
	// Over all rounds: operations cut off by a kill, and kills that came
	// while operations were in flight.
	interrupted, midFlight int
}

func testKillLoop(t *testing.T, b backendConfig, seed uint64, rounds int, budget time.Duration) {
	start := time.Now()
	// No confetti layer on MinIO: its 17000 chunks cost seconds per push
	// and pull there, and the paths it is for are the index's, the same
	// whatever the blob store.
	layers := makeLoopLayers(mrand.New(mrand.NewPCG(seed, 0)), b.s3 == nil)
	lp := &killLoop{t: t, s: startServer(t, b), seed: seed, layers: layers}
	var total int64
	for _, l := range lp.layers {
		total += l.size
	}
	t.Logf("%d layers, %.1f MiB in all; %d rounds", len(lp.layers), float64(total)/(1<<20), rounds)
	done := 0
	for done < rounds {
		lp.round(done)
		done++
		if t.Failed() {
			t.Fatalf("round %d failed (seed %d); stopping", done-1, seed)
		}
		// A time bound for slow machines (and -race): past the budget,
		// stop once the -short number of rounds is done.
		if el := time.Since(start); budget > 0 && done >= 5 && done < rounds && el+el/time.Duration(done) > budget {
			t.Logf("stopping after %d of %d rounds: %v spent, the budget is %v", done, rounds, el.Round(time.Millisecond), budget)
			break
		}
	}
	if lp.interrupted == 0 || lp.midFlight == 0 {
		t.Errorf("in %d rounds no kill interrupted an operation: the loop tested nothing", done)
	}
	t.Logf("%d rounds in %v: %d kills mid-flight, %d operations cut off", done, time.Since(start).Round(time.Millisecond), lp.midFlight, lp.interrupted)
}

// killLoopBudget bounds the loop's runs (shared by the backends), beyond
// the first 5 rounds of each.
const killLoopBudget = 50 * time.Second

// plan draws the round's operations: at most one per layer, so that each
// layer's outcome is one operation's.
func (lp *killLoop) plan(round int) []*loopOp {
	r := lp.r
	var ops []*loopOp
	push := func(l *loopLayer) {
		op := &loopOp{layer: l, method: "client", record: r.IntN(10) < 6}
		switch x := r.IntN(10); {
		case l.confetti:
			op.method = "chunks"
		case x < 4:
			op.method = "stream"
		case x < 7:
			op.method = "seekable"
		}
		ops = append(ops, op)
	}
	for _, l := range lp.layers {
		x := r.Float64()
		switch {
		case round == 0:
			push(l) // everything at once
		case l.expect == absent && x < 0.65:
			push(l)
		case l.expect == present && x < 0.2:
			ops = append(ops, &loopOp{layer: l, delete: true})
		case l.expect == present && x < 0.35:
			push(l) // again: every chunk is there already
		}
	}
	r.Shuffle(len(ops), func(i, j int) { ops[i], ops[j] = ops[j], ops[i] })
	return ops
}

// killSwitch draws where the round's kill lands.
func (lp *killLoop) killSwitch(round int, ops []*loopOp) *killSwitch {
	r := lp.r
	var pushes, deletes int
	var data int64 // bytes of the layers pushed that the server lacks
	for _, op := range ops {
		if op.delete {
			deletes++
			continue
		}
		pushes++
		if op.layer.expect != present {
			data += op.layer.size
		}
	}
	k := &killSwitch{proc: lp.s.cmd.Process}
	switch x := r.IntN(100); {
	case round == 0:
		// The first round pushes every layer to an empty server, so at
		// least the bytes of the distinct parts go out: a kill before
		// three quarters of them always lands mid-push.
		seen := map[*byte]bool{}
		var distinct int64
		for _, l := range lp.layers {
			for _, p := range l.parts {
				if len(p) > 0 && !seen[&p[0]] {
					seen[&p[0]] = true
					distinct += int64(len(p))
				}
			}
		}
		k.kind, k.at = "bytes", distinct/4+r.Int64N(distinct/2)
	case x < 35 || pushes == 0 && deletes == 0:
		// Pushes share chunks, so fewer bytes than data may go out: then
		// the kill comes when the round is over.
		k.kind, k.at = "bytes", 1+r.Int64N(max(data, 1))
	case x < 55 && pushes > 0:
		k.kind, k.at = "commit", 1+r.Int64N(int64(pushes))
	case x < 65 && deletes > 0:
		k.kind, k.at = "delete", 1+r.Int64N(int64(deletes))
	default:
		k.kind, k.at = "ack", 1+r.Int64N(int64(len(ops)))
	}
	// Sometimes the kill comes a little after the event instead, while the
	// server acts on it: more often for a commit or a delete, whose work
	// happens after the call goes out.
	if p := 3; round > 0 && r.IntN(10) < p+2*boolInt(k.kind == "commit" || k.kind == "delete") {
		k.delay = time.Duration(r.Int64N(int64(25 * time.Millisecond)))
	}
	return k
}

// round runs one round: operations from 4 workers until the kill, the
// restart, the checks.
func (lp *killLoop) round(round int) {
	t, s := lp.t, lp.s
	start := time.Now()
	// Draws of their own for each round, so that a replay with the same
	// seed strays only where a kill cut off other operations.
	lp.r = mrand.New(mrand.NewPCG(lp.seed, uint64(round)+1))
	ops := lp.plan(round)
	ks := lp.killSwitch(round, ops)
	conn, err := grpc.NewClient(s.addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)),
		grpc.WithChainUnaryInterceptor(ks.unary),
		grpc.WithChainStreamInterceptor(ks.stream))
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(conn)
	raw := cairnv1.NewLayerServiceClient(conn)

	const workers = 4
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(ops); i += workers {
				op := ops[i]
				if ks.fired.Load() {
					return // the rest never start
				}
				op.started = true
				op.err = lp.run(c, raw, op)
				if op.err != nil {
					op.errAfterKill = ks.fired.Load() && unavailable(op.err)
					return // the server is gone (or broken: reported below)
				}
				ks.event("ack", 1)
			}
		}()
	}
	wg.Wait()
	midFlight := ks.fired.Load()
	ks.fire("quiescence (every operation done)")
	conn.Close()
	lp.waitKilled()

	// What the round did, and what the server must show for it.
	var acked, cut, notStarted int
	for _, op := range ops {
		l := op.layer
		switch {
		case !op.started:
			notStarted++
		case op.err != nil && !op.errAfterKill:
			t.Errorf("round %d: %v failed, not (only) for the kill: %v", round, op, op.err)
		case op.err != nil:
			cut++
			switch {
			case op.acked: // the push was acknowledged, its RecordStep cut off
				l.expect = present
			case op.delete || l.expect != present: // a push cut off never removes a layer
				l.expect = unknown
			}
		default:
			acked++
			switch {
			case op.delete:
				l.expect, l.stepHit = absent, false
			default:
				l.expect = present
				l.stepHit = l.stepHit || op.recorded
			}
		}
	}
	lp.interrupted += cut
	if midFlight {
		lp.midFlight++
	}

	touched := map[*loopLayer]bool{}
	for _, op := range ops {
		touched[op.layer] = op.started
	}
	s.start()
	listed, pulled, loose := lp.verify(round, touched)
	t.Logf("round %d: %d ops, %v: fired at %s; %d acknowledged, %d cut off, %d not started; %d layers listed, %.1f MiB pulled back, %d loose chunks fetched; %v",
		round, len(ops), ks, ks.what, acked, cut, notStarted, listed, float64(pulled)/(1<<20), loose, time.Since(start).Round(time.Millisecond))
}

// run does one operation; acked and recorded say how far it got.
func (lp *killLoop) run(c *client.Client, raw cairnv1.LayerServiceClient, op *loopOp) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l := op.layer
	if op.delete {
		if err := c.Delete(ctx, l.digest); err != nil {
			return err
		}
		op.acked = true
		return nil
	}
	var err error
	switch op.method {
	case "client", "seekable":
		rd := l.reader()
		if op.method == "seekable" {
			rd = bytes.NewReader(bytes.Join(l.parts, nil))
		}
		var res client.PushResult
		res, err = c.Push(ctx, rd, client.PushOptions{ExpectedDigest: l.digest, Size: l.size})
		if err == nil && (res.Digest != l.digest || res.Size != l.size) {
			return fmt.Errorf("push returned %s, %d bytes; want %s, %d", res.Digest, res.Size, l.digest, l.size)
		}
	case "stream":
		err = pushStream(ctx, raw, l)
	case "chunks":
		err = pushChunks(ctx, raw, l)
	}
	if err != nil {
		return err
	}
	op.acked = true
	if op.record {
		rec, err := c.RecordStep(ctx, "", l.step(), &client.LayerRef{Digest: l.digest}, nil)
		if err != nil {
			return err
		}
		if rec.Layer == nil || rec.Layer.Digest != l.digest {
			return fmt.Errorf("RecordStep returned %+v, want layer %s", rec.Layer, l.digest)
		}
		op.recorded = true
	}
	return nil
}

// pushStream pushes l with PushLayer: the server chunks it.
func pushStream(ctx context.Context, raw cairnv1.LayerServiceClient, l *loopLayer) error {
	ps, err := raw.PushLayer(ctx)
	if err != nil {
		return err
	}
	size := l.size
	send := func(req *cairnv1.PushLayerRequest) error {
		if err := ps.Send(req); err != nil {
			if errors.Is(err, io.EOF) {
				_, err = ps.CloseAndRecv() // the status says why
			}
			return fmt.Errorf("PushLayer: send: %w", err)
		}
		return nil
	}
	if err := send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Header{Header: &cairnv1.PushLayerHeader{
		ExpectedDigest: l.digest.String(), SizeBytes: &size}}}); err != nil {
		return err
	}
	buf := make([]byte, cairnv1.MaxDataMessageBytes)
	rd := l.reader()
	for {
		n, err := io.ReadFull(rd, buf)
		if n > 0 {
			if err := send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Data{Data: buf[:n]}}); err != nil {
				return err
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return err
		}
	}
	resp, err := ps.CloseAndRecv()
	if err != nil {
		return fmt.Errorf("PushLayer: %w", err)
	}
	if got := resp.GetLayer(); got.GetDigest() != l.digest.String() || got.GetSizeBytes() != l.size {
		return fmt.Errorf("PushLayer returned %s, %d bytes; want %s, %d", got.GetDigest(), got.GetSizeBytes(), l.digest, l.size)
	}
	return nil
}

// pushChunks pushes l's parts as its chunks: FindMissingChunks, PutChunks
// of the missing ones, CommitLayer.
func pushChunks(ctx context.Context, raw cairnv1.LayerServiceClient, l *loopLayer) error {
	refs := make([]*cairnv1.ChunkRef, len(l.parts))
	ids := make([]string, len(l.parts))
	for i, p := range l.parts {
		ids[i] = client.ChunkDigest(p).String()
		refs[i] = &cairnv1.ChunkRef{Digest: ids[i], SizeBytes: int64(len(p))}
	}
	resp, err := raw.FindMissingChunks(ctx, &cairnv1.FindMissingChunksRequest{Digests: ids})
	if err != nil {
		return fmt.Errorf("FindMissingChunks: %w", err)
	}
	missing := make(map[string]bool, len(resp.GetMissingDigests()))
	for _, m := range resp.GetMissingDigests() {
		missing[m] = true
	}
	if len(missing) > 0 {
		ps, err := raw.PutChunks(ctx)
		if err != nil {
			return fmt.Errorf("PutChunks: %w", err)
		}
		for i, p := range l.parts {
			if !missing[ids[i]] {
				continue
			}
			if err := ps.Send(&cairnv1.PutChunksRequest{Digest: ids[i], Data: p}); err != nil {
				if errors.Is(err, io.EOF) {
					_, err = ps.CloseAndRecv()
				}
				return fmt.Errorf("PutChunks: send: %w", err)
			}
		}
		if _, err := ps.CloseAndRecv(); err != nil {
			return fmt.Errorf("PutChunks: %w", err)
		}
	}
	cr, err := raw.CommitLayer(ctx, &cairnv1.CommitLayerRequest{Digest: l.digest.String(), Chunks: refs})
	if err != nil {
		return fmt.Errorf("CommitLayer: %w", err)
	}
	if got := cr.GetLayer(); got.GetDigest() != l.digest.String() || got.GetSizeBytes() != l.size {
		return fmt.Errorf("CommitLayer returned %s, %d bytes; want %s, %d", got.GetDigest(), got.GetSizeBytes(), l.digest, l.size)
	}
	return nil
}

// waitKilled waits for the server to exit and fails the test unless the
// test's SIGKILL is what ended it (not a crash of its own before).
func (lp *killLoop) waitKilled() { waitKilled(lp.t, lp.s) }

// waitKilled waits for s to exit and fails t unless the test's SIGKILL
// ended it.
func waitKilled(t *testing.T, s *server) {
	t.Helper()
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("cairn serve still running 30s after SIGKILL")
	}
	var ee *exec.ExitError
	if errors.As(s.exitErr, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return
		}
	}
	t.Fatalf("cairn serve ended with %v, not by the test's SIGKILL:\n%s", s.exitErr, s.log.String())
}

// verify checks the restarted server against what the round acknowledged
// and settles every unknown outcome to what the server shows. touched are
// the layers the round operated on. It returns the number of layers listed,
// the bytes pulled and the number of chunks fetched that no listed layer
// needs.
func (lp *killLoop) verify(round int, touched map[*loopLayer]bool) (int, int64, int) {
	t, s := lp.t, lp.s
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := client.Dial(ctx, s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	byDigest := make(map[digest.Digest]*loopLayer, len(lp.layers))
	for _, l := range lp.layers {
		byDigest[l.digest] = l
	}

	// ListLayers, every page.
	listed := map[digest.Digest]*loopLayer{}
	for token := ""; ; {
		page, next, err := c.List(ctx, token, 5)
		if err != nil {
			t.Fatalf("round %d: list after the restart: %v", round, err)
		}
		for _, info := range page {
			l := byDigest[info.Digest]
			switch {
			case l == nil:
				t.Errorf("round %d: the server lists %s, which the test never pushed", round, info.Digest)
				continue
			case listed[info.Digest] != nil:
				t.Errorf("round %d: %v listed twice", round, l)
			case info.Size != l.size:
				t.Errorf("round %d: %v listed with %d bytes", round, l, info.Size)
			}
			listed[info.Digest] = l
		}
		if next == "" {
			break
		}
		token = next
	}
	for _, l := range lp.layers {
		switch on := listed[l.digest] != nil; {
		case l.expect == present && !on:
			t.Errorf("round %d: %v: its push was acknowledged, but after the kill the server does not list it", round, l)
		case l.expect == absent && on:
			t.Errorf("round %d: %v: its delete was acknowledged (or it was never pushed), but after the kill the server lists it", round, l)
		}
	}

	// Every listed layer pulls back whole, 3 at a time; about every third
	// with a chunk cache directory (recipe and GetChunks instead of
	// PullLayer).
	type pullCheck struct {
		l      *loopLayer
		chunks string
		err    error
	}
	var checks []*pullCheck
	for _, l := range lp.layers { // in layer order: the draws stay seeded
		if listed[l.digest] == nil {
			continue
		}
		pc := &pullCheck{l: l}
		// (Not the confetti layer: a chunk cache directory holds a
		// file per chunk, slow to fill with 16000 tiny ones.)
		if lp.r.IntN(3) == 0 && !l.confetti {
			pc.chunks = filepath.Join(t.TempDir(), "chunks")
		}
		checks = append(checks, pc)
	}
	var pulled atomic.Int64
	work := make(chan *pullCheck)
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pc := range work {
				h := sha256.New()
				res, err := c.Pull(ctx, pc.l.digest, h, client.PullOptions{ChunkCacheDir: pc.chunks})
				pulled.Add(res.BytesWritten)
				pc.err = checkPulled(pc.l, h, res, err)
			}
		}()
	}
	for _, pc := range checks {
		work <- pc
	}
	close(work)
	wg.Wait()
	for _, pc := range checks {
		if pc.err != nil {
			how := "PullLayer"
			if pc.chunks != "" {
				how = "GetChunks"
			}
			t.Errorf("round %d: %v is listed but does not pull back (%s): %v", round, pc.l, how, pc.err)
		}
	}

	// The chunks of a layer the round pushed or deleted that is not listed
	// now: those the server says it has (a push would not send them) are
	// there, whole. (A listed layer's chunks were just pulled.)
	var loose int
	for _, l := range lp.layers {
		if touched[l] && listed[l.digest] == nil {
			n, err := lp.checkChunks(ctx, l)
			loose += n
			if err != nil {
				t.Errorf("round %d: %v is not listed, but its chunks are not all right: %v", round, l, err)
			}
		}
	}

	// StatLayer agrees; a step hits only for a listed layer, and always
	// for a listed one whose RecordStep was acknowledged.
	for _, l := range lp.layers {
		on := listed[l.digest] != nil
		info, err := c.Stat(ctx, l.digest)
		switch {
		case on && err != nil:
			t.Errorf("round %d: %v is listed, but stat says %v", round, l, err)
		case on && info.Size != l.size:
			t.Errorf("round %d: %v: stat says %d bytes", round, l, info.Size)
		case !on && !errors.Is(err, client.ErrNotFound):
			t.Errorf("round %d: %v is not listed, but stat says %v, %v (want not found)", round, l, info, err)
		}
		rec, err := c.LookupStep(ctx, "", l.step())
		hit := err == nil
		switch {
		case err != nil && !errors.Is(err, client.ErrMiss):
			t.Errorf("round %d: lookup of the step of %v: %v", round, l, err)
		case hit && !on:
			t.Errorf("round %d: the step of %v hits, but the layer is not listed", round, l)
		case hit && (rec.Layer == nil || rec.Layer.Digest != l.digest):
			t.Errorf("round %d: the step of %v hits with layer %+v", round, l, rec.Layer)
		case !hit && on && l.stepHit:
			t.Errorf("round %d: the step of %v misses, but its RecordStep was acknowledged and the layer is listed", round, l)
		}
		// Settle what the kill left open.
		l.stepHit = hit
		l.expect = absent
		if on {
			l.expect = present
		}
	}
	return len(listed), pulled.Load(), loose
}

// checkChunks asks the server which of l's chunks it has and fetches
// those: each must come back whole. It returns the number fetched.
func (lp *killLoop) checkChunks(ctx context.Context, l *loopLayer) (int, error) {
	conn, err := grpc.NewClient(lp.s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	raw := cairnv1.NewLayerServiceClient(conn)
	ids := l.chunkIDs(lp.t)
	if len(ids) == 0 {
		return 0, nil
	}
	resp, err := raw.FindMissingChunks(ctx, &cairnv1.FindMissingChunksRequest{Digests: ids})
	if err != nil {
		return 0, fmt.Errorf("FindMissingChunks: %w", err)
	}
	missing := map[string]bool{}
	for _, m := range resp.GetMissingDigests() {
		missing[m] = true
	}
	var have []string
	for _, id := range ids {
		if !missing[id] {
			have = append(have, id)
		}
	}
	if len(have) == 0 {
		return 0, nil
	}
	stream, err := raw.GetChunks(ctx, &cairnv1.GetChunksRequest{Digests: have})
	if err != nil {
		return 0, fmt.Errorf("GetChunks: %w", err)
	}
	for i := 0; ; i++ {
		msg, err := stream.Recv()
		if err == io.EOF {
			if i != len(have) {
				return i, fmt.Errorf("GetChunks sent %d of the %d chunks FindMissingChunks says the server has", i, len(have))
			}
			return i, nil
		}
		if err != nil {
			return i, fmt.Errorf("GetChunks of the %d chunks FindMissingChunks says the server has, after %d: %w", len(have), i, err)
		}
		if i >= len(have) || msg.GetDigest() != have[i] || client.ChunkDigest(msg.GetData()).String() != have[i] {
			return i, fmt.Errorf("GetChunks: message %d is %s with %d bytes hashing to %s", i, msg.GetDigest(), len(msg.GetData()), client.ChunkDigest(msg.GetData()))
		}
	}
}

// unavailable reports whether err is how a call fails when the server is
// gone: any other error, even after the kill, is the server's answer.
func unavailable(err error) bool {
	if errors.Is(err, client.ErrUnavailable) {
		return true
	}
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.Unavailable
}

func checkPulled(l *loopLayer, h hash.Hash, res client.PullResult, err error) error {
	if err != nil {
		return err
	}
	if got := digest.NewDigest(digest.SHA256, h); got != l.digest || res.BytesWritten != l.size {
		return fmt.Errorf("pulled %d bytes hashing to %s; want %d bytes, %s", res.BytesWritten, got, l.size, l.digest)
	}
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
