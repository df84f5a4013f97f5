package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/cairnbuild/cairn/client"
)

// cliRun is one in-process run of the CLI.
type cliRun struct {
	code           int
	stdout, stderr string
}

// runClientCLI runs the CLI in-process with stdin and the environment env.
func runClientCLI(t *testing.T, env map[string]string, stdin []byte, args ...string) cliRun {
	t.Helper()
	var stdout, stderr bytes.Buffer
	a := &app{stdin: bytes.NewReader(stdin), stdout: &stdout, stderr: &stderr, getenv: func(k string) string { return env[k] }}
	code := run(context.Background(), a, args)
	return cliRun{code, stdout.String(), stderr.String()}
}

func testLayer(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32() % 7) // compressible, like a tar of text
	}
	return b
}

func TestClientCommands(t *testing.T) {
	env := map[string]string{"CAIRN_SERVER": startTestServer(t), "CAIRN_PLATFORM": "linux/amd64"}
	dir := t.TempDir()
	layer := testLayer(1, 3<<20)
	path := filepath.Join(dir, "layer.tar")
	if err := os.WriteFile(path, layer, 0o644); err != nil {
		t.Fatal(err)
	}
	want := func(r cliRun, code int, args ...string) {
		t.Helper()
		if r.code != code {
			t.Fatalf("cairn %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, code, r.stdout, r.stderr)
		}
	}
	cli := func(code int, stdin []byte, args ...string) cliRun {
		t.Helper()
		r := runClientCLI(t, env, stdin, args...)
		want(r, code, args...)
		return r
	}

	// push FILE prints the digest and only the digest on stdout.
	r := cli(0, nil, "push", path, "--instruction", "RUN make")
	d := digest.FromBytes(layer)
	if strings.TrimSpace(r.stdout) != d.String() {
		t.Errorf("push stdout = %q, want the digest %s", r.stdout, d)
	}
	if !strings.Contains(r.stderr, "recorded step") {
		t.Errorf("push --instruction does not say it recorded the step: %q", r.stderr)
	}
	// push - reads stdin; the same bytes send nothing.
	r = cli(0, layer, "push", "-", "--json")
	var pr client.PushResult
	if err := json.Unmarshal([]byte(r.stdout), &pr); err != nil {
		t.Fatal(err)
	}
	if pr.Digest != d || pr.BytesSent != 0 || pr.Size != int64(len(layer)) {
		t.Errorf("push - = %+v, want digest %s, size %d, nothing sent", pr, d, len(layer))
	}

	// lookup: a hit (platform from CAIRN_PLATFORM), a miss.
	r = cli(0, nil, "lookup", "--instruction", "run make")
	if !strings.Contains(r.stdout, "layer        "+d.String()) {
		t.Errorf("lookup hit does not show the layer:\n%s", r.stdout)
	}
	r = cli(0, nil, "lookup", "--instruction", "RUN make", "--json")
	var hit struct {
		Hit bool `json:"hit"`
		client.StepRecord
	}
	if err := json.Unmarshal([]byte(r.stdout), &hit); err != nil || !hit.Hit || hit.Layer == nil || hit.Layer.Digest != d {
		t.Fatalf("lookup --json = %s (%v)", r.stdout, err)
	}
	cli(exitMiss, nil, "lookup", "--instruction", "RUN make", "--platform", "linux/arm64")

	// record a metadata-only step, then look the chain up from stdin.
	cli(0, nil, "record", "--parent", hit.Next.String(), "--instruction", "ENV A=1")
	r = cli(0, []byte("RUN make\n\n# comment\nENV A=1\n"), "lookup", "--chain", "-")
	if strings.Count(r.stdout, "HIT") != 2 {
		t.Errorf("lookup --chain: want 2 hits:\n%s", r.stdout)
	}
	r = cli(exitMiss, []byte("RUN make\nENV A=1\nRUN make test\n"), "lookup", "--chain", "-", "--json")
	var chain struct {
		Hits int `json:"hits"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &chain); err != nil || chain.Hits != 2 {
		t.Errorf("lookup --chain --json with a miss = %s (%v), want 2 hits", r.stdout, err)
	}

	// pull to a file, to stdout, a range, through a chunk cache.
	out := filepath.Join(dir, "out.tar")
	cli(0, nil, "pull", d.String(), "-o", out)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, layer) {
		t.Errorf("pull -o FILE: %d bytes that differ from the %d pushed", len(got), len(layer))
	}
	if r = cli(0, nil, "pull", d.String(), "-o", "-"); r.stdout != string(layer) {
		t.Errorf("pull -o -: %d bytes that differ from the %d pushed", len(r.stdout), len(layer))
	}
	if r = cli(0, nil, "pull", d.String(), "-o", "-", "--offset", "10", "--length", "20"); r.stdout != string(layer[10:30]) {
		t.Errorf("pull of a range = %q, want %q", r.stdout, layer[10:30])
	}
	env["CAIRN_CHUNK_CACHE"] = filepath.Join(dir, "chunks")
	cli(0, nil, "pull", d.String(), "-o", out)
	r = cli(0, nil, "pull", d.String(), "-o", out, "--json")
	var pulled client.PullResult
	if err := json.Unmarshal([]byte(r.stdout), &pulled); err != nil || pulled.BytesFetched != 0 || pulled.ChunksCached == 0 {
		t.Errorf("second pull through the chunk cache = %s (%v), want nothing fetched", r.stdout, err)
	}

	// stat, ls, rm.
	r = cli(0, nil, "stat", d.String())
	if !strings.Contains(r.stdout, "3145728") {
		t.Errorf("stat does not show the size:\n%s", r.stdout)
	}
	r = cli(0, nil, "stat", "--json")
	var st client.Stats
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.Layers != 1 || st.LogicalBytes != int64(len(layer)) {
		t.Errorf("stat --json = %s (%v)", r.stdout, err)
	}
	r = cli(0, nil, "ls", "--json")
	var ls []client.LayerInfo
	if err := json.Unmarshal([]byte(r.stdout), &ls); err != nil || len(ls) != 1 || ls[0].Digest != d {
		t.Errorf("ls --json = %s (%v)", r.stdout, err)
	}
	cli(0, nil, "rm", d.String())
	r = cli(exitNotFound, nil, "stat", d.String())
	if !strings.Contains(r.stderr, "not found") {
		t.Errorf("stat of a deleted layer: %q", r.stderr)
	}
	cli(exitNotFound, nil, "rm", d.String())
	cli(exitNotFound, nil, "pull", d.String(), "-o", out)
	cli(exitMiss, nil, "lookup", "--instruction", "RUN make")
}

// TestClientCommandErrors checks that mistakes get a message that says
// what to do, and exit status 1.
func TestClientCommandErrors(t *testing.T) {
	addr := startTestServer(t)
	env := map[string]string{"CAIRN_SERVER": addr}
	d := digest.FromString("x").String()
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		msg  string
	}{
		{"malformed digest", env, []string{"pull", "sha256:abc", "-o", "-"}, "not a digest"},
		{"no -o", env, []string{"pull", d}, "-o FILE"},
		{"json to stdout", env, []string{"pull", d, "-o", "-", "--json"}, "--json"},
		{"negative offset", env, []string{"pull", d, "-o", "-", "--offset", "-1"}, "at least 0"},
		{"step flags without instruction", env, []string{"push", "-", "--parent", d}, "add --instruction"},
		{"lookup without a step", env, []string{"lookup"}, "--instruction"},
		{"chain and instruction", env, []string{"lookup", "--chain", "-", "--instruction", "RUN x"}, "drop --instruction"},
		{"bad timeout twin", map[string]string{"CAIRN_SERVER": addr, "CAIRN_TIMEOUT": "soon"}, []string{"ls"}, "CAIRN_TIMEOUT"},
		{"timeout twin applies", map[string]string{"CAIRN_SERVER": addr, "CAIRN_TIMEOUT": "1ns"}, []string{"ls"}, "deadline exceeded"},
		{"bad no-progress twin", map[string]string{"CAIRN_SERVER": addr, "CAIRN_NO_PROGRESS": "maybe"}, []string{"push", "-"}, `CAIRN_NO_PROGRESS="maybe"`},
		{"server down", map[string]string{"CAIRN_SERVER": "127.0.0.1:1"}, []string{"ls"}, "is `cairn serve` running at 127.0.0.1:1"},
		{"flag beats twin", env, []string{"ls", "--server", "127.0.0.1:1"}, "127.0.0.1:1"},
		{"wrong expected digest", env, []string{"push", "-", "--expect", d}, "digest mismatch"},
		{"unknown instruction", env, []string{"lookup", "--instruction", "FROB x"}, "FROB"},
		{"record of a layer not pushed", env, []string{"record", "--instruction", "RUN x", "--layer", d}, "push it first"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runClientCLI(t, tc.env, []byte("some layer"), tc.args...)
			if r.code == 0 || !strings.Contains(r.stderr, tc.msg) {
				t.Errorf("exit %d, stderr %q; want a failure saying %q", r.code, r.stderr, tc.msg)
			}
		})
	}
}

func TestParseChain(t *testing.T) {
	d := digest.FromString("ctx")
	for _, tc := range []struct {
		name, in string
		want     []client.Step
		err      string
	}{
		{"plain", "RUN a\nENV B=1\n", []client.Step{{Instruction: "RUN a", Platform: "p"}, {Instruction: "ENV B=1", Platform: "p"}}, ""},
		{"comments and blanks", "# x\n\n  RUN a  \n", []client.Step{{Instruction: "RUN a", Platform: "p"}}, ""},
		{"options", "--inputs=" + d.String() + " --platform=q --build-arg=A=1 COPY . /src\n",
			[]client.Step{{Instruction: "COPY . /src", InputsDigest: d, Platform: "q", BuildArgs: []string{"A=1"}}}, ""},
		{"flag of the instruction kept", "COPY --from=x / /\n", []client.Step{{Instruction: "COPY --from=x / /", Platform: "p"}}, ""},
		{"json", `{"instruction": "RUN a \\\n  b", "build_args": ["X=1"]}` + "\n",
			[]client.Step{{Instruction: "RUN a \\\n  b", Platform: "p", BuildArgs: []string{"X=1"}}}, ""},
		{"json with an unknown field", `{"instruction": "RUN a", "parent": "x"}`, nil, "unknown field"},
		{"json without an instruction", `{"platform": "q"}`, nil, "without an instruction"},
		{"bad inputs", "--inputs=sha256:1 COPY . /\n", nil, "line 1"},
		{"unknown option", "\n--frob=1 RUN x\n", nil, "line 2: unknown option"},
		{"option without value", "--inputs RUN x\n", nil, "want --name=value"},
		{"options only", "--platform=q\n", nil, "no instruction"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseChain(strings.NewReader(tc.in), "p")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			gj, _ := json.Marshal(got)
			wj, _ := json.Marshal(tc.want)
			if string(gj) != string(wj) {
				t.Errorf("got %s, want %s", gj, wj)
			}
		})
	}
}
