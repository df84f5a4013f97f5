package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairnbuild/cairn/chunker"
	"github.com/cairnbuild/cairn/client"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// TestSignalDuringPush stops the server in the middle of a push, with
// SIGTERM (graceful) and SIGKILL (a crash): the push fails, no layer is
// half there after a restart, and everything committed before is intact.
func TestSignalDuringPush(t *testing.T) {
	for _, b := range backends(t) {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
			t.Run(b.name+"/"+sig.String(), func(t *testing.T) { testSignalDuringPush(t, b, sig) })
		}
	}
}

func testSignalDuringPush(t *testing.T, b backendConfig, sig syscall.Signal) {
	s := startServer(t, b)
	dir := t.TempDir()
	base := writeTar(t, filepath.Join(dir, "base.tar"), goSrcTree(t, "encoding"))
	var p1 pushJSON
	s.okJSON(&p1, nil, "push", filepath.Join(dir, "base.tar"), "--instruction", "RUN make base")

	// A push from a pipe: write the first part of the layer, wait until
	// the server has stored the chunks of the first batch, stop the server
	// while the client waits for the rest.
	size, split := 24<<20, 16<<20
	if testing.Short() {
		size, split = 16<<20, 12<<20
	}
	big := seeded(9, size)
	first := chunkDigests(t, big[:split])[:4]
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	push := exec.Command(cairnBin, "push", "-", "--json")
	push.Env = append(os.Environ(), "CAIRN_SERVER="+s.addr)
	push.Stdin = pr
	var stdout, stderr bytes.Buffer
	push.Stdout, push.Stderr = &stdout, &stderr
	if err := push.Start(); err != nil {
		t.Fatal(err)
	}
	pr.Close()
	if _, err := pw.Write(big[:split]); err != nil {
		t.Fatal(err)
	}
	raw := cairnv1.NewLayerServiceClient(s.dial())
	for deadline := time.Now().Add(20 * time.Second); ; {
		resp, err := raw.FindMissingChunks(context.Background(), &cairnv1.FindMissingChunksRequest{Digests: first})
		if err == nil && len(resp.GetMissingDigests()) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server did not get the first chunks of the push in 20s (%v, %d missing)\n%s", err, len(resp.GetMissingDigests()), stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// And a server-side-chunking push (PushLayer) cut off the same way:
	// half a layer sent, the stream still open.
	other := seeded(10, 6<<20)
	otherSize := int64(len(other))
	ps, err := raw.PushLayer(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ps.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Header{Header: &cairnv1.PushLayerHeader{SizeBytes: &otherSize}}})
	for i := 0; i < len(other)/2; i += cairnv1.MaxDataMessageBytes {
		if err := ps.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Data{Data: other[i : i+cairnv1.MaxDataMessageBytes]}}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // let the server take them in

	s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("cairn serve still running 30s after %v:\n%s", sig, s.log.String())
	}
	// The rest of the layer, to a server that is gone.
	go func() {
		pw.Write(big[split:])
		pw.Close()
	}()
	err = push.Wait()
	if err == nil {
		t.Fatalf("push succeeded although the server stopped in the middle:\n%s", stdout.String())
	}
	if !strings.Contains(stderr.String(), "cairn serve") && !strings.Contains(stderr.String(), "unavailable") {
		t.Errorf("push failure does not say what to do:\n%s", stderr.String())
	}
	t.Logf("push after %v: %v: %s", sig, err, strings.TrimSpace(stderr.String()))

	s.start()
	bigDigest := digest.FromBytes(big)
	s.want(exitNotFound, []string{"not found"}, "stat", bigDigest.String())
	s.want(exitNotFound, []string{"not found"}, "stat", digest.FromBytes(other).String())
	r := s.ok(nil, "ls", "--json")
	var layers []struct {
		Digest digest.Digest `json:"digest"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &layers); err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 || layers[0].Digest != p1.Digest {
		t.Errorf("after the restart the server lists %v, want only %s", layers, p1.Digest)
	}
	s.ok(nil, "pull", p1.Digest.String(), "-o", filepath.Join(dir, "base.out"))
	sameBytes(t, filepath.Join(dir, "base.out"), base)
	s.ok(nil, "lookup", "--instruction", "RUN make base")

	// The interrupted push, done again, works.
	bigPath := filepath.Join(dir, "big")
	if err := os.WriteFile(bigPath, big, 0o644); err != nil {
		t.Fatal(err)
	}
	var p2 pushJSON
	s.okJSON(&p2, nil, "push", bigPath)
	if p2.Digest != bigDigest {
		t.Errorf("push again: digest %s, want %s", p2.Digest, bigDigest)
	}
	t.Logf("push again sent %d of %d bytes (the chunks stored before the %v were kept)", p2.BytesSent, size, sig)
	s.ok(nil, "pull", bigDigest.String(), "-o", filepath.Join(dir, "big.out"))
	sameBytes(t, filepath.Join(dir, "big.out"), big)
}

// chunkDigests returns the digests of data's chunks, cut as the client
// cuts them.
func chunkDigests(t *testing.T, data []byte) []string {
	t.Helper()
	ch, err := chunker.New(bytes.NewReader(data), chunker.V1, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for {
		c, err := ch.Next()
		if err == io.EOF {
			return ids
		}
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, client.ChunkDigest(c.Data).String())
	}
}

// seeded returns n bytes from a seeded generator.
func seeded(seed uint64, n int) []byte {
	r := mrand.New(mrand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint64())
	}
	return b
}

// TestBadInput sends what a broken or hostile client would: a wrong or
// malformed digest, garbage on the gRPC port, oversized messages, bogus
// chunk lists. Each gets a clear error, nothing is stored, and the server
// keeps serving.
func TestBadInput(t *testing.T) {
	b := backends(t)[0] // the fs backend: the checks are above the blob store
	s := startServer(t, b)
	dir := t.TempDir()
	good := writeTar(t, filepath.Join(dir, "good.tar"), goSrcTree(t, "archive"))
	var p pushJSON
	s.okJSON(&p, nil, "push", filepath.Join(dir, "good.tar"))

	// healthy checks that the server still serves the good layer whole and
	// stores nothing else.
	healthy := func(t *testing.T) {
		t.Helper()
		s.alive()
		out := filepath.Join(t.TempDir(), "good.out")
		s.ok(nil, "pull", p.Digest.String(), "-o", out)
		sameBytes(t, out, good)
		r := s.ok(nil, "ls", "--json")
		if n := strings.Count(r.stdout, `"digest"`); n != 1 {
			t.Errorf("%d layers stored, want only the good one:\n%s", n, r.stdout)
		}
	}
	conn := s.dial()
	layers := cairnv1.NewLayerServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("wrong digest", func(t *testing.T) {
		wrong := digest.FromString("not the layer").String()
		s.want(exitFailure, []string{"digest mismatch", "nothing committed"}, "push", filepath.Join(dir, "good.tar"), "--expect", wrong)
		s.want(exitFailure, []string{"not a digest"}, "pull", "sha256:1234", "-o", filepath.Join(dir, "x"))
		s.want(exitFailure, []string{"not a digest"}, "lookup", "--parent", "md5:d41d8cd98f00b204e9800998ecf8427e", "--instruction", "RUN x")
		s.want(exitNotFound, []string{"not found"}, "pull", wrong, "-o", filepath.Join(dir, "x"))
		// Past the CLI's own checks, the server's: an unknown algorithm, a
		// short hex, a declared digest the data does not match.
		for _, d := range []string{"sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709", "sha256:abc", "", "sha256:" + strings.Repeat("Z", 64)} {
			_, err := layers.StatLayer(ctx, &cairnv1.StatLayerRequest{Digest: d})
			wantCode(t, err, codes.InvalidArgument, "StatLayer "+d)
		}
		stream, err := layers.PushLayer(ctx)
		if err != nil {
			t.Fatal(err)
		}
		stream.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Header{Header: &cairnv1.PushLayerHeader{ExpectedDigest: wrong}}})
		stream.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Data{Data: good[:100_000]}})
		_, err = stream.CloseAndRecv()
		wantCode(t, err, codes.InvalidArgument, "PushLayer with a wrong expected digest")
		healthy(t)
	})

	t.Run("truncated push", func(t *testing.T) {
		stream, err := layers.PushLayer(ctx)
		if err != nil {
			t.Fatal(err)
		}
		size := int64(len(good))
		stream.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Header{Header: &cairnv1.PushLayerHeader{SizeBytes: &size}}})
		stream.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Data{Data: good[:len(good)/2]}})
		_, err = stream.CloseAndRecv()
		wantCode(t, err, codes.InvalidArgument, "PushLayer cut short")
		healthy(t)
	})

	t.Run("garbage on the port", func(t *testing.T) {
		for _, garbage := range [][]byte{
			randomBytes(1 << 20),
			[]byte("GET / HTTP/1.1\r\nHost: cairn\r\n\r\n"),
			append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), randomBytes(64<<10)...), // a valid preface, then noise
		} {
			c, err := net.Dial("tcp", s.addr)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write(garbage) // the server may hang up mid-write
			io.Copy(io.Discard, c)
			c.Close()
		}
		healthy(t)
	})

	t.Run("oversized messages", func(t *testing.T) {
		// Above the server's receive limit (8 MiB by default).
		stream, err := layers.PutChunks(ctx)
		if err != nil {
			t.Fatal(err)
		}
		huge := randomBytes(9 << 20)
		stream.Send(&cairnv1.PutChunksRequest{Digest: client.ChunkDigest(huge).String(), Data: huge})
		_, err = stream.CloseAndRecv()
		wantCode(t, err, codes.ResourceExhausted, "PutChunks of a 9 MiB message")
		// Within the message limit but above the largest chunk (4 MiB).
		stream, err = layers.PutChunks(ctx)
		if err != nil {
			t.Fatal(err)
		}
		big := randomBytes(5 << 20)
		stream.Send(&cairnv1.PutChunksRequest{Digest: client.ChunkDigest(big).String(), Data: big})
		_, err = stream.CloseAndRecv()
		wantCode(t, err, codes.InvalidArgument, "PutChunks of a 5 MiB chunk", codes.ResourceExhausted)
		// Too many digests in one request.
		ids := make([]string, cairnv1.MaxChunksPerRequest+1)
		for i := range ids {
			ids[i] = client.ChunkDigest([]byte{byte(i), byte(i >> 8), byte(i >> 16)}).String()
		}
		_, err = layers.FindMissingChunks(ctx, &cairnv1.FindMissingChunksRequest{Digests: ids})
		wantCode(t, err, codes.InvalidArgument, "FindMissingChunks of 65537 digests", codes.ResourceExhausted)
		healthy(t)
	})

	t.Run("bogus chunk lists", func(t *testing.T) {
		chunk := randomBytes(100 << 10)
		id := client.ChunkDigest(chunk)
		layer := digest.FromBytes(chunk) // the layer of that one chunk
		// A chunk whose bytes are not what its digest says.
		stream, err := layers.PutChunks(ctx)
		if err != nil {
			t.Fatal(err)
		}
		stream.Send(&cairnv1.PutChunksRequest{Digest: client.ChunkDigest([]byte("other")).String(), Data: chunk})
		_, err = stream.CloseAndRecv()
		wantCode(t, err, codes.InvalidArgument, "PutChunks with a wrong digest")
		// Commit naming a chunk that was never uploaded.
		_, err = layers.CommitLayer(ctx, &cairnv1.CommitLayerRequest{Digest: layer.String(),
			Chunks: []*cairnv1.ChunkRef{{Digest: id.String(), SizeBytes: int64(len(chunk))}}})
		wantCode(t, err, codes.FailedPrecondition, "CommitLayer of a chunk never uploaded")
		// Upload it, then commit it under a wrong layer digest, a wrong
		// size, a malformed chunk digest, no chunks at all.
		stream, err = layers.PutChunks(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&cairnv1.PutChunksRequest{Digest: id.String(), Data: chunk}); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.CloseAndRecv(); err != nil {
			t.Fatal(err)
		}
		ref := &cairnv1.ChunkRef{Digest: id.String(), SizeBytes: int64(len(chunk))}
		for _, tc := range []struct {
			name string
			req  *cairnv1.CommitLayerRequest
		}{
			{"wrong layer digest", &cairnv1.CommitLayerRequest{Digest: digest.FromString("x").String(), Chunks: []*cairnv1.ChunkRef{ref}}},
			{"chunk twice, digest of once", &cairnv1.CommitLayerRequest{Digest: layer.String(), Chunks: []*cairnv1.ChunkRef{ref, ref}}},
			{"wrong chunk size", &cairnv1.CommitLayerRequest{Digest: layer.String(), Chunks: []*cairnv1.ChunkRef{{Digest: id.String(), SizeBytes: 1}}}},
			{"malformed chunk digest", &cairnv1.CommitLayerRequest{Digest: layer.String(), Chunks: []*cairnv1.ChunkRef{{Digest: "blake3:nothex", SizeBytes: 1}}}},
			{"chunk named by sha256", &cairnv1.CommitLayerRequest{Digest: layer.String(), Chunks: []*cairnv1.ChunkRef{{Digest: layer.String(), SizeBytes: int64(len(chunk))}}}},
			{"layer named by blake3", &cairnv1.CommitLayerRequest{Digest: id.String(), Chunks: []*cairnv1.ChunkRef{ref}}},
			{"no layer digest", &cairnv1.CommitLayerRequest{Chunks: []*cairnv1.ChunkRef{ref}}},
		} {
			_, err := layers.CommitLayer(ctx, tc.req)
			wantCode(t, err, codes.InvalidArgument, "CommitLayer, "+tc.name, codes.FailedPrecondition)
		}
		healthy(t)
	})

	t.Run("bogus steps", func(t *testing.T) {
		s.want(exitFailure, []string{"instruction"}, "lookup", "--instruction", "FROBNICATE the build")
		s.want(exitNotFound, []string{"push it first"}, "record", "--instruction", "RUN x", "--layer", digest.FromString("never pushed").String())
		cache := cairnv1.NewCacheServiceClient(conn)
		steps := make([]*cairnv1.Step, cairnv1.MaxChainSteps+1)
		for i := range steps {
			steps[i] = &cairnv1.Step{Instruction: "RUN true"}
		}
		_, err := cache.LookupChain(ctx, &cairnv1.LookupChainRequest{Steps: steps})
		wantCode(t, err, codes.InvalidArgument, "LookupChain of 1001 steps", codes.ResourceExhausted)
		_, err = cache.RecordStep(ctx, &cairnv1.RecordStepRequest{Step: &cairnv1.Step{Instruction: "RUN x"}, Config: make([]byte, 65<<10)})
		wantCode(t, err, codes.InvalidArgument, "RecordStep with a 65 KiB config", codes.ResourceExhausted)
		healthy(t)
	})
}

// wantCode fails the test unless err is a gRPC status with code want (or
// one of also) and a message a person can read.
func wantCode(t *testing.T, err error, want codes.Code, what string, also ...codes.Code) {
	t.Helper()
	st, ok := status.FromError(err)
	if err == nil || !ok {
		t.Errorf("%s: err = %v, want code %v", what, err, want)
		return
	}
	okCode := st.Code() == want
	for _, c := range also {
		okCode = okCode || st.Code() == c
	}
	if !okCode {
		t.Errorf("%s: code %v (%s), want %v", what, st.Code(), st.Message(), want)
	}
	if len(st.Message()) < 10 {
		t.Errorf("%s: message %q does not explain", what, st.Message())
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}
