package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// stalledPulls is how many `cairn pull -o -` whose consumer stops reading
// the test starts: issue #14's 32, eight times the server's transfer slots.
const stalledPulls = 32

// TestStalledReaders is issue #14's "stalled readers hold every transfer
// slot": 32 pulls of a big layer whose consumers stop reading (their
// stdout is a pipe nobody reads) against a server with 4 transfer slots.
// The send idle timeout cuts each of them, so a new push and a new pull,
// started after them and queued behind them, still finish; each stalled
// pull, once its consumer reads again, fails with the server's idle error,
// and the server logs each as a stalled client.
//
// Before the send idle timeout the new push and pull waited for a slot for
// good: the test's deadline ends them and the test fails.
func TestStalledReaders(t *testing.T) {
	// Through the flags' environment twins, which the harness's servers
	// inherit. All the test's clients are loopback clients, which the
	// server counts as one client: the per-client share would only halve
	// the pace at which the stalled pulls are cut, so the test lifts it.
	t.Setenv("CAIRN_MAX_TRANSFERS", "4")
	t.Setenv("CAIRN_MAX_TRANSFERS_PER_CLIENT", "4")
	t.Setenv("CAIRN_SEND_IDLE_TIMEOUT", "1s")
	s := startServer(t, backendConfig{name: "fs"})
	dir := t.TempDir()

	// The big layer: incompressible, and more than a stalled pull's client
	// buffers (a 16 MiB stream window, a message, a pipe) hold, so the
	// server's sends block.
	big := filepath.Join(dir, "big.tar")
	if err := os.WriteFile(big, seeded(14, 40<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	var p pushJSON
	s.okJSON(&p, nil, "push", big)
	small := seeded(15, 3<<20)
	if err := os.WriteFile(filepath.Join(dir, "small.tar"), small, 0o644); err != nil {
		t.Fatal(err)
	}
	var ps pushJSON
	s.okJSON(&ps, nil, "push", filepath.Join(dir, "small.tar"))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// The stalled pulls. Each reads its first byte from its pipe (the
	// first data came: the pull holds a slot), then nobody reads.
	pulls := make([]*stalledPull, stalledPulls)
	holding := make(chan struct{}, stalledPulls)
	for i := range pulls {
		pulls[i] = startStalledPull(t, s, p.Digest, holding)
	}
	for range 4 {
		select {
		case <-holding:
		case <-ctx.Done():
			t.Fatal("the stalled pulls never took the server's 4 transfer slots")
		}
	}

	// A new push and a new pull, queued behind the stalled pulls.
	fresh := filepath.Join(dir, "fresh.tar")
	if err := os.WriteFile(fresh, seeded(16, 3<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, args := range [][]string{
		{"push", fresh},
		{"pull", string(ps.Digest), "-o", filepath.Join(dir, "small.out")},
	} {
		wg.Go(func() {
			if out, err := s.cliContext(ctx, args...); err != nil {
				t.Errorf("cairn %s while 32 stalled readers queue for 4 slots: %v\n%s", strings.Join(args, " "), err, out)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if got, err := os.ReadFile(filepath.Join(dir, "small.out")); err != nil || !bytes.Equal(got, small) {
		t.Fatalf("the new pull wrote other bytes (%v)", err)
	}

	// Every stalled pull is cut by the server (which logs a stalled
	// client) before its consumer reads again: one read earlier would
	// let it finish.
	waitFor(ctx, t, "32 stalled clients in the server log", func() bool {
		return strings.Count(s.log.String(), `msg="client stalled"`) >= stalledPulls
	})
	for _, sp := range pulls {
		wg.Go(func() { sp.drain(ctx, t) })
	}
	wg.Wait()
	if strings.Contains(s.log.String(), "level=ERROR") {
		t.Errorf("the server logged errors:\n%s", s.log.String())
	}
}

// stalledPull is a `cairn pull -o -` whose stdout is a pipe the test reads
// one byte of, then nothing until drain.
type stalledPull struct {
	cmd    *exec.Cmd
	stdout *os.File // the pipe's read end
	stderr bytes.Buffer
}

func startStalledPull(t *testing.T, s *server, d digest.Digest, holding chan<- struct{}) *stalledPull {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	sp := &stalledPull{cmd: exec.Command(cairnBin, "pull", string(d), "-o", "-"), stdout: pr}
	sp.cmd.Env = append(os.Environ(), "CAIRN_SERVER="+s.addr)
	sp.cmd.Stdout, sp.cmd.Stderr = pw, &sp.stderr
	if err := sp.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	t.Cleanup(func() {
		sp.cmd.Process.Kill()
		sp.cmd.Wait()
		pr.Close()
	})
	go func() {
		if _, err := pr.Read(make([]byte, 1)); err == nil {
			holding <- struct{}{}
		}
	}()
	return sp
}

// drain reads the rest of the pull's output and checks that it failed
// with the server's idle error.
func (sp *stalledPull) drain(ctx context.Context, t *testing.T) {
	go func() {
		<-ctx.Done()
		sp.cmd.Process.Kill() // the deadline passed: end the read below
	}()
	n, _ := io.Copy(io.Discard, sp.stdout)
	err := sp.cmd.Wait()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Errorf("stalled pull: still running at the test's deadline (%d bytes read)\n%s", n, sp.stderr.String())
	case !errors.As(err, &ee):
		t.Errorf("stalled pull: %v, want a failure (%d bytes read)\n%s", err, n, sp.stderr.String())
	case !strings.Contains(sp.stderr.String(), "send idle timeout"):
		t.Errorf("stalled pull: exit %d, want the server's idle error:\n%s", ee.ExitCode(), sp.stderr.String())
	}
}

// cliContext runs the CLI against s until ctx ends; err is nil for exit 0.
func (s *server) cliContext(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, cairnBin, args...)
	cmd.Env = append(os.Environ(), "CAIRN_SERVER="+s.addr)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = errors.Join(err, ctx.Err())
	}
	return string(out), err
}

// waitFor waits until cond holds, checking every 50ms, or fails the test
// when ctx ends.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		}
	}
}
