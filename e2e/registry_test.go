package e2e

import (
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// tool finds a registry client the tests drive: on PATH or in the Go bin
// directory, where scripts/tools.sh installs them. Missing, it skips the
// test, except under CI=true, where it fails: scripts/test.sh installs
// every one.
func tool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true but %s is not installed: run scripts/test.sh, which installs it", name)
	}
	t.Skipf("%s is not installed (scripts/test.sh installs it)", name)
	return ""
}

// run runs a client command and returns its stdout; a failure fails the
// test with everything it printed.
func run(t *testing.T, bin string, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir()) // no user config or credentials
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", filepath.Base(bin), strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// TestCrane drives cairn serve's registry with the crane binary:
// push (append), pull, copy between repositories (mounts), ls, catalog,
// blob, delete.
func TestCrane(t *testing.T) {
	crane := tool(t, "crane")
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			s := startServer(t, b)
			dir := t.TempDir()
			layer := writeTar(t, filepath.Join(dir, "layer.tar"), goSrcTree(t, "net/http"))
			h := s.reg
			out := run(t, crane, "append", "--insecure", "-f", filepath.Join(dir, "layer.tar"), "-t", h+"/app/one:v1")
			// append prints the pushed reference, repo@digest.
			_, img, _ := strings.Cut(strings.TrimSpace(lastLine(out)), "@")
			if got := strings.TrimSpace(run(t, crane, "digest", "--insecure", h+"/app/one:v1")); got != img {
				t.Fatalf("crane digest %q differs from what append printed (%q)", got, out)
			}
			// The layer crane pushed (gzip) comes back byte for byte.
			var m struct {
				Layers []struct {
					Digest digest.Digest
					Size   int64
				}
			}
			if err := json.Unmarshal([]byte(run(t, crane, "manifest", "--insecure", h+"/app/one:v1")), &m); err != nil || len(m.Layers) != 1 {
				t.Fatalf("manifest: %v %+v", err, m)
			}
			blob := run(t, crane, "blob", "--insecure", h+"/app/one@"+string(m.Layers[0].Digest))
			if digest.FromString(blob) != m.Layers[0].Digest || int64(len(blob)) != m.Layers[0].Size {
				t.Fatalf("blob: %d bytes hashing to %s, want %d and %s", len(blob), digest.FromString(blob), m.Layers[0].Size, m.Layers[0].Digest)
			}
			// crane gzips with compress/gzip at BestSpeed: stored as the tar
			// plus that encoder, and rebuilt for the read above.
			if got := s.metric(`cairn_compressed_blobs_total{stored="rebuilt"}`); got != 1 {
				t.Errorf("compressed blobs stored rebuilt: %v, want crane's layer", got)
			}
			if got := s.metric(`cairn_rebuilt_served_bytes_total`); got != float64(m.Layers[0].Size) {
				t.Errorf("rebuilt bytes served: %v, want the layer's %d", got, m.Layers[0].Size)
			}
			run(t, crane, "pull", "--insecure", h+"/app/one:v1", filepath.Join(dir, "pulled.tar"))
			run(t, crane, "copy", "--insecure", h+"/app/one:v1", h+"/app/two:copy")
			if run(t, crane, "digest", "--insecure", h+"/app/two:copy") != run(t, crane, "digest", "--insecure", h+"/app/one:v1") {
				t.Fatal("the copy has another digest")
			}
			run(t, crane, "tag", "--insecure", h+"/app/one:v1", "v2")
			if got := run(t, crane, "ls", "--insecure", h+"/app/one"); got != "v1\nv2\n" {
				t.Fatalf("crane ls: %q", got)
			}
			if got := run(t, crane, "catalog", "--insecure", h); got != "app/one\napp/two\n" {
				t.Fatalf("crane catalog: %q", got)
			}
			d := strings.TrimSpace(run(t, crane, "digest", "--insecure", h+"/app/one:v1"))
			run(t, crane, "delete", "--insecure", h+"/app/one@"+d)
			if got := run(t, crane, "ls", "--insecure", h+"/app/one"); got != "" {
				t.Fatalf("crane ls after delete: %q", got)
			}
			run(t, crane, "manifest", "--insecure", h+"/app/two:copy") // the copy stays

			// The same bytes through cairn push and as a registry blob are
			// one stored layer.
			s.ok(nil, "push", filepath.Join(dir, "layer.tar"))
			ld := digest.FromBytes(layer)
			res, err := http.Post("http://"+h+"/v2/raw/blobs/uploads/?digest="+string(ld), "application/octet-stream", bytes.NewReader(layer))
			if err != nil || res.StatusCode != 201 {
				t.Fatalf("monolithic upload: %v %v", err, res)
			}
			res.Body.Close()
			var layers []struct{ Digest digest.Digest }
			s.okJSON(&layers, nil, "ls")
			n := 0
			for _, l := range layers {
				if l.Digest == ld {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("the layer is listed %d times: %+v", n, layers)
			}
		})
	}
}

// TestSkopeo drives the registry with containers/image, through Debian's
// skopeo: copy in and out of an OCI layout, inspect.
func TestSkopeo(t *testing.T) {
	skopeo := tool(t, "skopeo")
	crane := tool(t, "crane")
	s := startServer(t, backendConfig{name: "fs"})
	dir := t.TempDir()
	writeTar(t, filepath.Join(dir, "layer.tar"), goSrcTree(t, "net/url"))
	h := s.reg
	run(t, crane, "append", "--insecure", "-f", filepath.Join(dir, "layer.tar"), "-t", h+"/src/app:v1")
	oci := "oci:" + filepath.Join(dir, "layout") + ":v1"
	run(t, skopeo, "copy", "--insecure-policy", "--src-tls-verify=false", "docker://"+h+"/src/app:v1", oci)
	run(t, skopeo, "copy", "--insecure-policy", "--dest-tls-verify=false", oci, "docker://"+h+"/dst/app:v1")
	var info struct {
		Digest digest.Digest
		Layers []string
	}
	if err := json.Unmarshal([]byte(run(t, skopeo, "inspect", "--tls-verify=false", "docker://"+h+"/dst/app:v1")), &info); err != nil {
		t.Fatal(err)
	}
	if len(info.Layers) != 1 || info.Digest == "" {
		t.Fatalf("inspect: %+v", info)
	}
	// Between repositories of the same registry (skopeo tries a mount).
	run(t, skopeo, "copy", "--insecure-policy", "--src-tls-verify=false", "--dest-tls-verify=false",
		"docker://"+h+"/dst/app:v1", "docker://"+h+"/third/app:v1")
	run(t, skopeo, "inspect", "--tls-verify=false", "docker://"+h+"/third/app:v1")

	// containers/image compresses an uncompressed layer itself (pgzip)
	// when it copies it to a registry: an image with an uncompressed
	// layer (pushed with go-containerregistry), copied to another
	// repository by skopeo, then out again (skopeo checks every digest).
	rebuilt := s.metric(`cairn_compressed_blobs_total{stored="rebuilt"}`)
	kept := s.metric(`cairn_compressed_blobs_total{stored="kept"}`)
	// A file of this run's own makes the layer new to skopeo's blob-info
	// cache (under /var/lib/containers for root, kept across runs): with
	// a record of these bytes from an earlier run it may reuse a blob it
	// knows instead of compressing the layer again.
	files := goSrcTree(t, "net/mail")
	files["run-stamp"] = []byte(randomHex(16))
	raw := static.NewLayer(writeTar(t, filepath.Join(dir, "mail.tar"), files), types.OCIUncompressedLayer)
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.AppendLayers(base, raw)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(h + "/raw/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	run(t, skopeo, "copy", "--insecure-policy", "--src-tls-verify=false", "--dest-tls-verify=false", "docker://"+h+"/raw/app:v1", "docker://"+h+"/pgzip/app:v1")
	run(t, skopeo, "copy", "--insecure-policy", "--src-tls-verify=false", "docker://"+h+"/pgzip/app:v1", "dir:"+filepath.Join(dir, "back"))
	r2, k2 := s.metric(`cairn_compressed_blobs_total{stored="rebuilt"}`), s.metric(`cairn_compressed_blobs_total{stored="kept"}`)
	if r2+k2 != rebuilt+kept+1 {
		t.Fatalf("skopeo's compressed layer: %v rebuilt and %v kept, before %v and %v", r2, k2, rebuilt, kept)
	}
	t.Logf("skopeo's own gzip layer was stored %s", map[bool]string{true: "rebuilt (pgzip reproduced)", false: "as it came (not reproduced)"}[r2 > rebuilt])
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestOCIConformance runs the distribution-spec conformance suite (built
// from the module proxy by scripts/tools.sh) against cairn serve: pull,
// push, content discovery and management, referrers, sha512, tag
// parameters on a manifest PUT (a draft feature), with upload cancel and
// the digest headers required. Not run: sparse manifests (the spec lets a
// registry refuse a manifest that names blobs it lacks, and cairn does).
func TestOCIConformance(t *testing.T) {
	suite := tool(t, "oci-conformance.test")
	s := startServer(t, backendConfig{name: "fs"})
	dir := t.TempDir()
	cmd := exec.Command(suite)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "OCI_REGISTRY="+s.reg, "OCI_TLS=disabled", "OCI_RESULTS_DIR="+filepath.Join(dir, "results"),
		"OCI_API_BLOBS_UPLOAD_CANCEL=true", "OCI_API_BLOBS_DIGEST_HEADER=true", "OCI_API_MANIFESTS_DIGEST_HEADER=true",
		"OCI_DATA_SPARSE=false", "OCI_API_MANIFESTS_TAG_PARAM=true", "OCI_HIDE_SKIPPED_WORKFLOWS=0")
	out, err := cmd.CombinedOutput()
	res, rerr := os.ReadFile(filepath.Join(dir, "results", "results.yaml"))
	if err != nil || rerr != nil || strings.Contains(string(res), ": FAIL") || !strings.Contains(string(out), "OCI Conformance Result: Pass") {
		t.Fatalf("conformance suite: %v %v\n%s\nresults:\n%s", err, rerr, out, res)
	}
	// The summary, for the log.
	if i := strings.Index(string(out), "OCI Conformance Result"); i >= 0 {
		t.Logf("%s", out[i:])
	}
}
