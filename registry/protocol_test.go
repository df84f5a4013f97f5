package registry_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/registry"
	"github.com/opencontainers/go-digest"
)

// resp is an answer of the registry, read whole.
type resp struct {
	status int
	header http.Header
	body   []byte
}

// code returns the first error code of an error body.
func (r resp) code() string {
	var e struct {
		Errors []struct{ Code string } `json:"errors"`
	}
	if json.Unmarshal(r.body, &e) != nil || len(e.Errors) == 0 {
		return ""
	}
	return e.Errors[0].Code
}

func (r resp) String() string {
	return fmt.Sprintf("%d %v %s", r.status, r.header, clipBody(r.body))
}

func clipBody(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "…"
	}
	return string(b)
}

// do sends one request; hdr is "Key: value" pairs.
func (tr *testRegistry) do(t testing.TB, method, path string, body []byte, hdr ...string) resp {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, tr.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hdr {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp{res.StatusCode, res.Header, b}
}

func expect(t testing.TB, r resp, status int, code string) {
	t.Helper()
	if r.status != status || (code != "" && r.code() != code) {
		t.Fatalf("got %s; want %d %s", r, status, code)
	}
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// pushBlob uploads b monolithically into repo.
func (tr *testRegistry) pushBlob(t testing.TB, repo string, b []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(b)
	r := tr.do(t, "POST", "/v2/"+repo+"/blobs/uploads/?digest="+string(d), b, "Content-Type: application/octet-stream")
	expect(t, r, 201, "")
	return d
}

// manifestFor returns an OCI image manifest naming config and layers.
func manifestFor(config digest.Digest, configSize int, layers ...[]byte) []byte {
	type desc struct {
		MediaType string        `json:"mediaType"`
		Digest    digest.Digest `json:"digest"`
		Size      int           `json:"size"`
	}
	m := struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Config        desc   `json:"config"`
		Layers        []desc `json:"layers"`
	}{2, "application/vnd.oci.image.manifest.v1+json", desc{"application/vnd.oci.image.config.v1+json", config, configSize}, []desc{}}
	for _, l := range layers {
		m.Layers = append(m.Layers, desc{"application/vnd.oci.image.layer.v1.tar", digest.FromBytes(l), len(l)})
	}
	b, _ := json.Marshal(m)
	return b
}

func TestBaseAndErrors(t *testing.T) {
	tr := newTestRegistry(t)
	r := tr.do(t, "GET", "/v2/", nil)
	expect(t, r, 200, "")
	if r.header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("no API version header: %v", r.header)
	}
	long := strings.Repeat("a", 256)
	for _, tc := range []struct{ method, path, code string }{
		{"GET", "/v2/Upper/manifests/latest", "NAME_INVALID"},
		{"GET", "/v2/a/../b/manifests/latest", "NAME_INVALID"},
		{"GET", "/v2/a//b/manifests/latest", "NAME_INVALID"},
		{"GET", "/v2/" + long + "/tags/list", "NAME_INVALID"},
		{"GET", "/v2/ok/manifests/bad!tag", "TAG_INVALID"},
		{"GET", "/v2/ok/manifests/" + strings.Repeat("t", 129), "TAG_INVALID"},
		{"GET", "/v2/ok/blobs/sha256:abc", "DIGEST_INVALID"},
		{"GET", "/v2/ok/blobs/md5:" + strings.Repeat("0", 32), "DIGEST_INVALID"},
		{"HEAD", "/v2/ok/blobs/" + string(digest.FromString("x")), ""},
		{"GET", "/v2/ok/blobs/" + string(digest.FromString("x")), "BLOB_UNKNOWN"},
		{"GET", "/v2/ok/manifests/latest", "MANIFEST_UNKNOWN"},
		{"GET", "/v2/ok/tags/list", "NAME_UNKNOWN"},
		{"GET", "/v2/ok/blobs/uploads/0123456789abcdef0123456789abcdef", "BLOB_UPLOAD_UNKNOWN"},
		{"POST", "/v2/ok/manifests/latest", "UNSUPPORTED"},
	} {
		r := tr.do(t, tc.method, tc.path, nil)
		if r.status < 400 || (tc.code != "" && r.code() != tc.code) {
			t.Errorf("%s %s: %s; want code %s", tc.method, tc.path, r, tc.code)
		}
	}
}

func TestMonolithicAndRange(t *testing.T) {
	tr := newTestRegistry(t)
	b := randBytes(3<<20 + 17)
	d := tr.pushBlob(t, "app", b)
	r := tr.do(t, "HEAD", "/v2/app/blobs/"+string(d), nil)
	expect(t, r, 200, "")
	if r.header.Get("Content-Length") != fmt.Sprint(len(b)) || r.header.Get("Docker-Content-Digest") != string(d) {
		t.Fatalf("HEAD headers %v", r.header)
	}
	r = tr.do(t, "GET", "/v2/app/blobs/"+string(d), nil)
	expect(t, r, 200, "")
	if !bytes.Equal(r.body, b) {
		t.Fatal("GET returned other bytes")
	}
	for _, tc := range []struct {
		rng      string
		off, end int
	}{{"bytes=0-0", 0, 0}, {"bytes=100-", 100, len(b) - 1}, {"bytes=1048570-2097160", 1048570, 2097160}, {"bytes=-10", len(b) - 10, len(b) - 1}} {
		r := tr.do(t, "GET", "/v2/app/blobs/"+string(d), nil, "Range: "+tc.rng)
		expect(t, r, 206, "")
		if !bytes.Equal(r.body, b[tc.off:tc.end+1]) {
			t.Fatalf("%s: wrong bytes", tc.rng)
		}
		if want := fmt.Sprintf("bytes %d-%d/%d", tc.off, tc.end, len(b)); r.header.Get("Content-Range") != want {
			t.Fatalf("%s: Content-Range %q, want %q", tc.rng, r.header.Get("Content-Range"), want)
		}
	}
	r = tr.do(t, "GET", "/v2/app/blobs/"+string(d), nil, fmt.Sprintf("Range: bytes=%d-", len(b)))
	expect(t, r, 416, "")
	// Another repository does not see it until it is mounted there.
	expect(t, tr.do(t, "HEAD", "/v2/other/blobs/"+string(d), nil), 404, "")
	// A wrong digest stores nothing: no layer under either digest.
	before := layers(t, tr)
	wrong := digest.FromString("not this")
	junk := randBytes(1000)
	r = tr.do(t, "POST", "/v2/app/blobs/uploads/?digest="+string(wrong), junk)
	expect(t, r, 400, "DIGEST_INVALID")
	expect(t, tr.do(t, "HEAD", "/v2/app/blobs/"+string(wrong), nil), 404, "")
	if n := layers(t, tr); n != before {
		t.Fatalf("%d layers after a refused upload, %d before", n, before)
	}
	// sha512 digests.
	b5 := randBytes(5000)
	d5 := digest.SHA512.FromBytes(b5)
	expect(t, tr.do(t, "POST", "/v2/app/blobs/uploads/?digest="+string(d5), b5), 201, "")
	r = tr.do(t, "GET", "/v2/app/blobs/"+string(d5), nil)
	expect(t, r, 200, "")
	if !bytes.Equal(r.body, b5) {
		t.Fatal("sha512 blob: wrong bytes")
	}
}

func TestChunkedUpload(t *testing.T) {
	tr := newTestRegistry(t)
	b := randBytes(5<<20 + 3)
	d := digest.FromBytes(b)
	r := tr.do(t, "POST", "/v2/app/blobs/uploads/", nil)
	expect(t, r, 202, "")
	loc := r.header.Get("Location")
	if !strings.HasPrefix(loc, "/v2/app/blobs/uploads/") || r.header.Get("Range") != "0-0" || r.header.Get("Docker-Upload-UUID") == "" {
		t.Fatalf("POST headers %v", r.header)
	}
	// First chunk with Content-Range.
	r = tr.do(t, "PATCH", loc, b[:1<<20], "Content-Range: 0-1048575", "Content-Type: application/octet-stream")
	expect(t, r, 202, "")
	if r.header.Get("Range") != "0-1048575" || r.header.Get("Location") == "" {
		t.Fatalf("PATCH headers %v", r.header)
	}
	// Out of order: 416, and nothing changes.
	r = tr.do(t, "PATCH", loc, b[2<<20:3<<20], fmt.Sprintf("Content-Range: %d-%d", 2<<20, 3<<20-1))
	expect(t, r, 416, "BLOB_UPLOAD_INVALID")
	// A Content-Length that disagrees with the Content-Range: refused
	// before a byte is taken.
	req, _ := http.NewRequest("PATCH", tr.srv.URL+loc, bytes.NewReader(b[1<<20:1<<20+10]))
	req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", 1<<20, 1<<20+99))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 400 {
		t.Fatalf("PATCH with a short body for its range: %d", res.StatusCode)
	}
	// Status.
	r = tr.do(t, "GET", loc, nil)
	expect(t, r, 204, "")
	if r.header.Get("Range") != "0-1048575" {
		t.Fatalf("status Range %q", r.header.Get("Range"))
	}
	// A streamed PATCH without Content-Range (docker, ggcr, containers/image).
	r = tr.do(t, "PATCH", loc, b[1<<20:4<<20])
	expect(t, r, 202, "")
	if r.header.Get("Range") != fmt.Sprintf("0-%d", 4<<20-1) {
		t.Fatalf("Range %q", r.header.Get("Range"))
	}
	// The final PUT carries the rest.
	r = tr.do(t, "PUT", loc+"?digest="+string(d), b[4<<20:], "Content-Type: application/octet-stream")
	expect(t, r, 201, "")
	if r.header.Get("Location") != "/v2/app/blobs/"+string(d) || r.header.Get("Docker-Content-Digest") != string(d) {
		t.Fatalf("PUT headers %v", r.header)
	}
	r = tr.do(t, "GET", "/v2/app/blobs/"+string(d), nil)
	if !bytes.Equal(r.body, b) {
		t.Fatal("wrong bytes after a chunked upload")
	}
	// The session is gone.
	expect(t, tr.do(t, "GET", loc, nil), 404, "BLOB_UPLOAD_UNKNOWN")
	if n := tr.cache.OpenUploads(); n != 0 {
		t.Fatalf("%d sessions open", n)
	}

	// POST then one PUT with the whole body (containerd, BuildKit).
	b2 := randBytes(100000)
	r = tr.do(t, "POST", "/v2/app/blobs/uploads/", nil)
	r = tr.do(t, "PUT", r.header.Get("Location")+"?digest="+string(digest.FromBytes(b2)), b2)
	expect(t, r, 201, "")

	// A wrong digest at PUT: 400, nothing stored, the session ends.
	r = tr.do(t, "POST", "/v2/app/blobs/uploads/", nil)
	loc = r.header.Get("Location")
	expect(t, tr.do(t, "PATCH", loc, randBytes(1000)), 202, "")
	wrong := digest.FromString("wrong")
	before := layers(t, tr)
	expect(t, tr.do(t, "PUT", loc+"?digest="+string(wrong), nil), 400, "DIGEST_INVALID")
	if n := layers(t, tr); n != before {
		t.Fatalf("%d layers after a refused upload, %d before", n, before)
	}
	expect(t, tr.do(t, "HEAD", "/v2/app/blobs/"+string(wrong), nil), 404, "")
	expect(t, tr.do(t, "GET", loc, nil), 404, "BLOB_UPLOAD_UNKNOWN")

	// An upload is its repository's: another cannot continue it.
	r = tr.do(t, "POST", "/v2/app/blobs/uploads/", nil)
	id := r.header.Get("Docker-Upload-UUID")
	expect(t, tr.do(t, "PATCH", "/v2/other/blobs/uploads/"+id, []byte("x")), 404, "BLOB_UPLOAD_UNKNOWN")
	// DELETE cancels.
	expect(t, tr.do(t, "DELETE", r.header.Get("Location"), nil), 204, "")
	expect(t, tr.do(t, "GET", r.header.Get("Location"), nil), 404, "BLOB_UPLOAD_UNKNOWN")

	// A session closed with a sha512 digest: checked after the fact, then
	// served under it; a wrong one is refused.
	b5 := randBytes(700000)
	d5 := digest.SHA512.FromBytes(b5)
	r = tr.do(t, "POST", "/v2/app/blobs/uploads/", nil)
	loc = r.header.Get("Location")
	expect(t, tr.do(t, "PATCH", loc, b5[:300000]), 202, "")
	expect(t, tr.do(t, "PUT", loc+"?digest="+string(d5), b5[300000:]), 201, "")
	r = tr.do(t, "GET", "/v2/app/blobs/"+string(d5), nil)
	if r.status != 200 || !bytes.Equal(r.body, b5) {
		t.Fatalf("sha512 blob after a session: %s", r)
	}
	r = tr.do(t, "POST", "/v2/app/blobs/uploads/", nil)
	wrong5 := digest.SHA512.FromString("wrong")
	junk5 := randBytes(5000)
	expect(t, tr.do(t, "PUT", r.header.Get("Location")+"?digest="+string(wrong5), junk5), 400, "DIGEST_INVALID")
	expect(t, tr.do(t, "HEAD", "/v2/app/blobs/"+string(wrong5), nil), 404, "")
	// By design the bytes stay committed under their SHA-256 (another
	// upload may share them; see Upload.Commit), linked nowhere.
	expect(t, tr.do(t, "HEAD", "/v2/app/blobs/"+string(digest.FromBytes(junk5)), nil), 404, "")

	// An empty blob.
	empty := digest.FromBytes(nil)
	r = tr.do(t, "POST", "/v2/app/blobs/uploads/", nil)
	expect(t, tr.do(t, "PUT", r.header.Get("Location")+"?digest="+string(empty), nil), 201, "")
	r = tr.do(t, "HEAD", "/v2/app/blobs/"+string(empty), nil)
	expect(t, r, 200, "")
	if r.header.Get("Content-Length") != "0" {
		t.Fatalf("empty blob: %v", r.header)
	}
}

func TestMount(t *testing.T) {
	tr := newTestRegistry(t)
	d := tr.pushBlob(t, "src", randBytes(70000))
	r := tr.do(t, "POST", "/v2/dst/blobs/uploads/?mount="+string(d)+"&from=src", nil)
	expect(t, r, 201, "")
	if r.header.Get("Location") != "/v2/dst/blobs/"+string(d) || r.header.Get("Docker-Content-Digest") != string(d) {
		t.Fatalf("mount headers %v", r.header)
	}
	expect(t, tr.do(t, "HEAD", "/v2/dst/blobs/"+string(d), nil), 200, "")
	// From a repository that does not have it: an upload starts (202).
	r = tr.do(t, "POST", "/v2/third/blobs/uploads/?mount="+string(d)+"&from=nothere", nil)
	expect(t, r, 202, "")
	if !strings.HasPrefix(r.header.Get("Location"), "/v2/third/blobs/uploads/") {
		t.Fatalf("mount fallback headers %v", r.header)
	}
	expect(t, tr.do(t, "HEAD", "/v2/third/blobs/"+string(d), nil), 404, "")
	// Deleting a blob from one repository leaves the others.
	expect(t, tr.do(t, "DELETE", "/v2/dst/blobs/"+string(d), nil), 202, "")
	expect(t, tr.do(t, "HEAD", "/v2/dst/blobs/"+string(d), nil), 404, "")
	expect(t, tr.do(t, "HEAD", "/v2/src/blobs/"+string(d), nil), 200, "")
	expect(t, tr.do(t, "DELETE", "/v2/dst/blobs/"+string(d), nil), 404, "BLOB_UNKNOWN")
}

func TestManifests(t *testing.T) {
	tr := newTestRegistry(t)
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	cd := tr.pushBlob(t, "app", cfg)
	layer := randBytes(200000)
	ld := tr.pushBlob(t, "app", layer)
	m := manifestFor(cd, len(cfg), layer)
	md := digest.FromBytes(m)
	const mt = "Content-Type: application/vnd.oci.image.manifest.v1+json"

	// Bad ones first: nothing may be stored.
	missing := manifestFor(cd, len(cfg), layer, []byte("not pushed"))
	expect(t, tr.do(t, "PUT", "/v2/app/manifests/v1", missing, mt), 400, "MANIFEST_BLOB_UNKNOWN")
	expect(t, tr.do(t, "PUT", "/v2/app/manifests/v1", []byte(`{"schemaVersion":2,`), mt), 400, "MANIFEST_INVALID")
	expect(t, tr.do(t, "PUT", "/v2/app/manifests/v1", []byte(`{"schemaVersion":1,"fsLayers":[]}`),
		"Content-Type: application/vnd.docker.distribution.manifest.v1+prettyjws"), 415, "UNSUPPORTED")
	expect(t, tr.do(t, "PUT", "/v2/app/manifests/v1", []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}`), mt), 400, "MANIFEST_INVALID")
	expect(t, tr.do(t, "PUT", "/v2/app/manifests/"+string(digest.FromString("other")), m, mt), 400, "DIGEST_INVALID")
	expect(t, tr.do(t, "PUT", "/v2/app/manifests/bad!tag", m, mt), 400, "TAG_INVALID")
	// A blob of another repository does not count.
	expect(t, tr.do(t, "PUT", "/v2/other/manifests/v1", m, mt), 400, "MANIFEST_BLOB_UNKNOWN")
	big := append([]byte(`{"schemaVersion":2,"annotations":{"x":"`), bytes.Repeat([]byte("a"), cache.DefaultMaxManifestSize)...)
	expect(t, tr.do(t, "PUT", "/v2/app/manifests/v1", big, mt), 413, "SIZE_INVALID")
	expect(t, tr.do(t, "GET", "/v2/app/manifests/v1", nil), 404, "MANIFEST_UNKNOWN")
	if _, err := tr.cache.Stat(context.Background(), digest.FromBytes(missing)); err == nil {
		t.Fatal("a refused manifest was stored")
	}

	r := tr.do(t, "PUT", "/v2/app/manifests/v1", m, mt)
	expect(t, r, 201, "")
	if r.header.Get("Location") != "/v2/app/manifests/"+string(md) || r.header.Get("Docker-Content-Digest") != string(md) {
		t.Fatalf("PUT headers %v", r.header)
	}
	for _, ref := range []string{"v1", string(md)} {
		r = tr.do(t, "GET", "/v2/app/manifests/"+ref, nil, "Accept: application/vnd.oci.image.manifest.v1+json")
		expect(t, r, 200, "")
		if !bytes.Equal(r.body, m) || r.header.Get("Content-Type") != "application/vnd.oci.image.manifest.v1+json" {
			t.Fatalf("GET %s: %s", ref, r)
		}
		r = tr.do(t, "HEAD", "/v2/app/manifests/"+ref, nil)
		expect(t, r, 200, "")
		if r.header.Get("Docker-Content-Digest") != string(md) || r.header.Get("Content-Length") != fmt.Sprint(len(m)) {
			t.Fatalf("HEAD %s: %v", ref, r.header)
		}
	}
	// Tags, paged.
	for _, tag := range []string{"v2", "v3", "latest"} {
		expect(t, tr.do(t, "PUT", "/v2/app/manifests/"+tag, m, mt), 201, "")
	}
	r = tr.do(t, "GET", "/v2/app/tags/list?n=2", nil)
	expect(t, r, 200, "")
	if string(r.body) != `{"name":"app","tags":["latest","v1"]}` || !strings.Contains(r.header.Get("Link"), "last=v1") {
		t.Fatalf("tags page 1: %s", r)
	}
	r = tr.do(t, "GET", "/v2/app/tags/list?n=2&last=v1", nil)
	if string(r.body) != `{"name":"app","tags":["v2","v3"]}` || r.header.Get("Link") != "" {
		t.Fatalf("tags page 2: %s", r)
	}
	// Delete a tag: the manifest stays.
	expect(t, tr.do(t, "DELETE", "/v2/app/manifests/v3", nil), 202, "")
	expect(t, tr.do(t, "GET", "/v2/app/manifests/v3", nil), 404, "MANIFEST_UNKNOWN")
	expect(t, tr.do(t, "GET", "/v2/app/manifests/v2", nil), 200, "")
	// Delete by digest: the manifest and every tag naming it.
	expect(t, tr.do(t, "DELETE", "/v2/app/manifests/"+string(md), nil), 202, "")
	for _, ref := range []string{"v1", "v2", "latest", string(md)} {
		expect(t, tr.do(t, "GET", "/v2/app/manifests/"+ref, nil), 404, "MANIFEST_UNKNOWN")
	}
	r = tr.do(t, "GET", "/v2/app/tags/list", nil)
	if string(r.body) != `{"name":"app","tags":[]}` {
		t.Fatalf("tags after delete: %s", r)
	}
	// The blobs are still there.
	expect(t, tr.do(t, "HEAD", "/v2/app/blobs/"+string(ld), nil), 200, "")
}

// TestIndexWithBlobChildren: BuildKit's legacy cache format
// (image-manifest=false) is an index whose children are layer blobs.
func TestIndexWithBlobChildren(t *testing.T) {
	tr := newTestRegistry(t)
	layer := randBytes(10000)
	ld := tr.pushBlob(t, "cache", layer)
	idx := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`+
		`{"mediaType":"application/vnd.buildkit.cacheconfig.v0","digest":"%s","size":5},`+
		`{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}`,
		digest.FromString("cfg"), ld, len(layer))
	expect(t, tr.do(t, "PUT", "/v2/cache/manifests/main", []byte(idx), "Content-Type: application/vnd.oci.image.index.v1+json"), 201, "")
	// A child that is a manifest must be there.
	bad := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`+
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":5}]}`, digest.FromString("m"))
	expect(t, tr.do(t, "PUT", "/v2/cache/manifests/bad", []byte(bad), "Content-Type: application/vnd.oci.image.index.v1+json"), 400, "MANIFEST_BLOB_UNKNOWN")
}

func TestReferrers(t *testing.T) {
	tr := newTestRegistry(t)
	cfg := []byte(`{}`)
	cd := tr.pushBlob(t, "app", cfg)
	m := manifestFor(cd, len(cfg))
	md := digest.FromBytes(m)
	expect(t, tr.do(t, "PUT", "/v2/app/manifests/v1", m, "Content-Type: application/vnd.oci.image.manifest.v1+json"), 201, "")
	empty := tr.pushBlob(t, "app", []byte("{}"))
	sig := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"artifactType":"application/vnd.example.sig","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"%s","size":2},`+
		`"layers":[],"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%d},"annotations":{"k":"v"}}`,
		empty, md, len(m))
	sd := digest.FromString(sig)
	r := tr.do(t, "PUT", "/v2/app/manifests/"+string(sd), []byte(sig), "Content-Type: application/vnd.oci.image.manifest.v1+json")
	expect(t, r, 201, "")
	if r.header.Get("OCI-Subject") != string(md) {
		t.Fatalf("no OCI-Subject: %v", r.header)
	}
	var idx struct {
		Manifests []struct {
			Digest       digest.Digest
			ArtifactType string
			Annotations  map[string]string
		}
	}
	for _, tc := range []struct {
		query  string
		n      int
		filter bool
	}{{"", 1, false}, {"?artifactType=application/vnd.example.sig", 1, true}, {"?artifactType=other", 0, true}} {
		r = tr.do(t, "GET", "/v2/app/referrers/"+string(md)+tc.query, nil)
		expect(t, r, 200, "")
		if r.header.Get("Content-Type") != "application/vnd.oci.image.index.v1+json" || (r.header.Get("OCI-Filters-Applied") != "") != tc.filter {
			t.Fatalf("referrers%s headers: %v", tc.query, r.header)
		}
		if err := json.Unmarshal(r.body, &idx); err != nil || len(idx.Manifests) != tc.n {
			t.Fatalf("referrers%s: %s", tc.query, r.body)
		}
		if tc.n == 1 && (idx.Manifests[0].Digest != sd || idx.Manifests[0].ArtifactType != "application/vnd.example.sig" || idx.Manifests[0].Annotations["k"] != "v") {
			t.Fatalf("referrer: %+v", idx.Manifests[0])
		}
	}
	// Deleting the referrer removes it from the list.
	expect(t, tr.do(t, "DELETE", "/v2/app/manifests/"+string(sd), nil), 202, "")
	r = tr.do(t, "GET", "/v2/app/referrers/"+string(md), nil)
	if json.Unmarshal(r.body, &idx); len(idx.Manifests) != 0 {
		t.Fatalf("after delete: %s", r.body)
	}
}

func TestCatalogPaging(t *testing.T) {
	tr := newTestRegistry(t)
	for _, repo := range []string{"b", "a/x", "a", "c/d/e"} {
		tr.pushBlob(t, repo, []byte(repo))
	}
	r := tr.do(t, "GET", "/v2/_catalog", nil)
	if string(r.body) != `{"repositories":["a","a/x","b","c/d/e"]}` {
		t.Fatalf("catalog: %s", r)
	}
	r = tr.do(t, "GET", "/v2/_catalog?n=2", nil)
	if string(r.body) != `{"repositories":["a","a/x"]}` || !strings.Contains(r.header.Get("Link"), "last=a/x") {
		t.Fatalf("page 1: %s", r)
	}
	r = tr.do(t, "GET", "/v2/_catalog?n=2&last=a/x", nil)
	if string(r.body) != `{"repositories":["b","c/d/e"]}` || r.header.Get("Link") != "" {
		t.Fatalf("page 2: %s", r)
	}
}

// openPatch starts a PATCH of a body of n bytes to loc on a raw
// connection and returns it, for the test to send (or not send) the body.
// The connection closes when the test ends.
func (tr *testRegistry) openPatch(t testing.TB, loc string, n int64) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", tr.host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "PATCH %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n", loc, tr.host, n)
	return conn
}

// rawRequest writes head and then part of a body on a raw connection, and
// closes it: a client that vanishes mid-upload.
func (tr *testRegistry) rawRequest(t testing.TB, head string, body []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", tr.host)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "%s\r\nHost: %s\r\n\r\n", head, tr.host)
	conn.Write(body)
	conn.Close()
}

// waitFor polls cond (a state change in another goroutine the test cannot
// hook into: the server noticing a closed connection).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// reindexWithin runs Reindex and fails the test with msg if it takes more
// than 30 s (Reindex aborts every upload session and waits for its push).
func reindexWithin(t testing.TB, tr *testRegistry, msg string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- tr.cache.Reindex(context.Background()) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal(msg)
	}
}

func layers(t testing.TB, tr *testRegistry) int64 {
	t.Helper()
	st, err := tr.cache.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st.Layers
}

func packBytes(t testing.TB, dir string) int64 {
	var n int64
	filepath.WalkDir(filepath.Join(dir, "blobs"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(p, "packs") {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func packCount(t testing.TB, dir string) int {
	n := 0
	filepath.WalkDir(filepath.Join(dir, "blobs"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(p, "packs") {
			n++
		}
		return nil
	})
	return n
}

// TestVanishingClients: clients that stop mid-body or abandon sessions
// leave no trace once the sessions expire, and the registry keeps serving.
func TestVanishingClients(t *testing.T) {
	tr := newTestRegistry(t, func(o *cache.Options) { o.UploadIdleTimeout = time.Hour })
	// Monolithic with a body shorter than its Content-Length.
	b := randBytes(3 << 20)
	d := digest.FromBytes(b)
	tr.rawRequest(t, fmt.Sprintf("POST /v2/app/blobs/uploads/?digest=%s HTTP/1.1\r\nContent-Length: %d", d, len(b)), b[:len(b)/2])
	// A PATCH cut off half way: the session keeps what arrived.
	r := tr.do(t, "POST", "/v2/app/blobs/uploads/", nil)
	loc := r.header.Get("Location")
	tr.rawRequest(t, fmt.Sprintf("PATCH %s HTTP/1.1\r\nContent-Length: %d", loc, len(b)), b[:1<<20])
	waitFor(t, "the cut PATCH to end", func() bool {
		r := tr.do(t, "GET", loc, nil)
		return r.status == 204 && r.header.Get("Range") == fmt.Sprintf("0-%d", 1<<20-1)
	})
	// It can be resumed where it stands.
	expect(t, tr.do(t, "PATCH", loc, b[1<<20:], fmt.Sprintf("Content-Range: %d-%d", 1<<20, len(b)-1)), 202, "")
	expect(t, tr.do(t, "PUT", loc+"?digest="+string(d), nil), 201, "")
	expect(t, tr.do(t, "GET", "/v2/app/blobs/"+string(d), nil), 200, "")

	// 1 000 sessions opened and abandoned, 20 of them after sending some
	// bytes, while other uploads go on.
	before := packCount(t, tr.dir)
	var wg sync.WaitGroup
	for i := range 1000 {
		wg.Go(func() {
			r := tr.do(t, "POST", "/v2/junk/blobs/uploads/", nil)
			if r.status != 202 {
				t.Errorf("POST %d: %s", i, r)
				return
			}
			if i%50 == 0 {
				tr.do(t, "PATCH", r.header.Get("Location"), randBytes(300<<10))
			}
		})
	}
	wg.Wait()
	if n := tr.cache.OpenUploads(); n != 1000 {
		t.Fatalf("%d sessions open, want 1000", n)
	}
	other := tr.pushBlob(t, "app", randBytes(1<<20))
	expect(t, tr.do(t, "HEAD", "/v2/app/blobs/"+string(other), nil), 200, "")
	if n := tr.cache.ExpireUploads(time.Now().Add(2 * time.Hour)); n != 1000 {
		t.Fatalf("expired %d sessions, want 1000", n)
	}
	if n := tr.cache.OpenUploads(); n != 0 {
		t.Fatalf("%d sessions open after expiry", n)
	}
	r = tr.do(t, "GET", "/v2/junk/tags/list", nil)
	expect(t, r, 404, "NAME_UNKNOWN")
	st, err := tr.cache.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Two layers: the resumed upload and the other push.
	if st.Layers != 2 {
		t.Fatalf("%d layers, want 2", st.Layers)
	}
	t.Logf("packs before the abandoned sessions %d, after %d (their chunks are unreferenced: garbage for the collector)", before, packCount(t, tr.dir))
}

// TestUploadLimit: sessions past MaxUploads get 429, and a slot frees when
// one ends.
func TestUploadLimit(t *testing.T) {
	tr := newTestRegistry(t, func(o *cache.Options) { o.MaxUploads = 3 })
	var locs []string
	for range 3 {
		r := tr.do(t, "POST", "/v2/app/blobs/uploads/", nil)
		expect(t, r, 202, "")
		locs = append(locs, r.header.Get("Location"))
	}
	expect(t, tr.do(t, "POST", "/v2/app/blobs/uploads/", nil), 429, "TOOMANYREQUESTS")
	// A monolithic upload needs no session.
	tr.pushBlob(t, "app", []byte("still works"))
	expect(t, tr.do(t, "DELETE", locs[0], nil), 204, "")
	expect(t, tr.do(t, "POST", "/v2/app/blobs/uploads/", nil), 202, "")
}

// TestConcurrentSameBlob: many clients upload the same blob at once; it is
// stored once.
func TestConcurrentSameBlob(t *testing.T) {
	tr := newTestRegistry(t)
	b := randBytes(8 << 20)
	d := digest.FromBytes(b)
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			repo := fmt.Sprintf("r%d", i)
			r := tr.do(t, "POST", "/v2/"+repo+"/blobs/uploads/", nil)
			r = tr.do(t, "PUT", r.header.Get("Location")+"?digest="+string(d), b)
			if r.status != 201 {
				t.Errorf("%s: %s", repo, r)
			}
		})
	}
	wg.Wait()
	st, err := tr.cache.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Layers != 1 || st.UniqueBytes != int64(len(b)) {
		t.Fatalf("stats %+v: want one layer of %d unique bytes", st, len(b))
	}
	// And once in the backend: the packs hold about one copy of the
	// (incompressible) bytes, not six.
	if n := packBytes(t, tr.dir); n > int64(len(b))*3/2 {
		t.Fatalf("packs hold %d bytes for one blob of %d", n, len(b))
	}
}

// TestReindexRestoresRepositories: manifests, tags, blob links and
// referrers come back from the backend alone.
func TestReindexRestoresRepositories(t *testing.T) {
	tr := newTestRegistry(t)
	cfg := []byte(`{"architecture":"amd64"}`)
	cd := tr.pushBlob(t, "app", cfg)
	layer := randBytes(100000)
	tr.pushBlob(t, "app", layer)
	m := manifestFor(cd, len(cfg), layer)
	md := digest.FromBytes(m)
	const mt = "Content-Type: application/vnd.oci.image.manifest.v1+json"
	expect(t, tr.do(t, "PUT", "/v2/app/manifests/v1", m, mt), 201, "")
	idx := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%d}]}`, md, len(m))
	expect(t, tr.do(t, "PUT", "/v2/app/manifests/multi", []byte(idx), "Content-Type: application/vnd.oci.image.index.v1+json"), 201, "")
	expect(t, tr.do(t, "PUT", "/v2/app/manifests/gone", m, mt), 201, "")
	expect(t, tr.do(t, "DELETE", "/v2/app/manifests/gone", nil), 202, "")
	tr.pushBlob(t, "other", []byte("x"))
	// A manifest whose bytes someone pushed first as a plain blob (so the
	// layer's media type is application/octet-stream), and which has no
	// mediaType field: only its Content-Type says what it is.
	m2 := []byte(strings.Replace(string(manifestFor(cd, len(cfg))), `"mediaType":"application/vnd.oci.image.manifest.v1+json",`, "", 1))
	tr.pushBlob(t, "elsewhere", m2)
	expect(t, tr.do(t, "PUT", "/v2/app/manifests/bare", m2, mt), 201, "")
	// The same bytes in another repository, as a Docker manifest: app's
	// answer stays OCI.
	tr.pushBlob(t, "docker", cfg)
	expect(t, tr.do(t, "PUT", "/v2/docker/manifests/v1", m2, "Content-Type: application/vnd.docker.distribution.manifest.v2+json"), 201, "")
	r0 := tr.do(t, "HEAD", "/v2/app/manifests/bare", nil)
	if r0.header.Get("Content-Type") != "application/vnd.oci.image.manifest.v1+json" {
		t.Fatalf("app's manifest turned into %q", r0.header.Get("Content-Type"))
	}
	// A blob deleted after the manifest that names it was accepted: the
	// manifest stays, before and after a reindex.
	expect(t, tr.do(t, "DELETE", "/v2/app/blobs/"+string(digest.FromBytes(layer)), nil), 202, "")
	expect(t, tr.do(t, "GET", "/v2/app/manifests/v1", nil), 200, "")

	// Lose the index entirely: a new, empty index directory over the
	// same blobs, then Reindex.
	tr.close()
	if err := os.RemoveAll(filepath.Join(tr.dir, "index")); err != nil {
		t.Fatal(err)
	}
	tr2 := openTestRegistry(t, tr.dir)
	if err := tr2.cache.Reindex(context.Background()); err != nil {
		t.Fatal(err)
	}
	r := tr2.do(t, "GET", "/v2/app/manifests/v1", nil)
	expect(t, r, 200, "")
	if !bytes.Equal(r.body, m) {
		t.Fatal("manifest bytes differ after reindex")
	}
	expect(t, tr2.do(t, "GET", "/v2/app/manifests/multi", nil), 200, "")
	expect(t, tr2.do(t, "GET", "/v2/app/manifests/gone", nil), 404, "MANIFEST_UNKNOWN")
	r = tr2.do(t, "GET", "/v2/app/tags/list", nil)
	if string(r.body) != `{"name":"app","tags":["bare","multi","v1"]}` {
		t.Fatalf("tags after reindex: %s", r)
	}
	for _, tc := range []struct{ path, mt string }{
		{"/v2/app/manifests/bare", "application/vnd.oci.image.manifest.v1+json"},
		{"/v2/docker/manifests/v1", "application/vnd.docker.distribution.manifest.v2+json"},
	} {
		r = tr2.do(t, "HEAD", tc.path, nil)
		if r.status != 200 || r.header.Get("Content-Type") != tc.mt {
			t.Fatalf("%s after reindex: %s, want type %s", tc.path, r, tc.mt)
		}
	}
	r = tr2.do(t, "GET", "/v2/_catalog", nil)
	if string(r.body) != `{"repositories":["app","docker","elsewhere","other"]}` {
		t.Fatalf("catalog after reindex: %s", r)
	}
	expect(t, tr2.do(t, "HEAD", "/v2/app/blobs/"+string(cd), nil), 200, "")
	expect(t, tr2.do(t, "HEAD", "/v2/other/blobs/"+string(cd), nil), 404, "")
}

// TestImagesCost: what `cairn ls --images` shows: per tag, the bytes of the
// manifest and everything it references, each blob once.
func TestImagesCost(t *testing.T) {
	tr := newTestRegistry(t)
	cfg := []byte(`{"architecture":"amd64"}`)
	cd := tr.pushBlob(t, "app", cfg)
	layer := randBytes(300000)
	tr.pushBlob(t, "app", layer)
	m := manifestFor(cd, len(cfg), layer, layer) // the same layer twice counts once
	expect(t, tr.do(t, "PUT", "/v2/app/manifests/v1", m, "Content-Type: application/vnd.oci.image.manifest.v1+json"), 201, "")
	md := digest.FromBytes(m)
	idx := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%d}]}`, md, len(m))
	expect(t, tr.do(t, "PUT", "/v2/app/manifests/multi", []byte(idx), "Content-Type: application/vnd.oci.image.index.v1+json"), 201, "")
	tr.pushBlob(t, "empty", []byte("x"))
	imgs, next, err := tr.cache.Images(context.Background(), "", 0)
	if err != nil || next != "" {
		t.Fatal(err, next)
	}
	if len(imgs) != 2 {
		t.Fatalf("images %+v", imgs)
	}
	want := int64(len(cfg) + len(layer) + len(m))
	if imgs[1].Tag != "v1" || imgs[1].Size != want || imgs[1].StoredSize <= 0 || imgs[1].MediaType != "application/vnd.oci.image.manifest.v1+json" {
		t.Fatalf("v1: %+v, want size %d", imgs[1], want)
	}
	if imgs[0].Tag != "multi" || imgs[0].Size != want+int64(len(idx)) {
		t.Fatalf("multi: %+v, want size %d", imgs[0], want+int64(len(idx)))
	}
	// Paging: one repository per page here.
	page, next, err := tr.cache.Images(context.Background(), "", 1)
	if err != nil || len(page) != 2 || next == "" {
		t.Fatalf("page 1: %v %+v %q", err, page, next)
	}
	page, next, err = tr.cache.Images(context.Background(), next, 1)
	if err != nil || len(page) != 0 || next != "" {
		t.Fatalf("page 2: %v %+v %q", err, page, next)
	}
	st, err := tr.cache.Stats(context.Background())
	if err != nil || st.Repositories != 2 || st.Tags != 2 || st.Manifests != 2 {
		t.Fatalf("stats %+v %v", st, err)
	}
}

// TestStalledClient: a client that sends part of a body and then nothing,
// without closing its connection, fails its request after the body idle
// timeout; its session keeps what arrived, and Reindex (which aborts
// sessions and waits for their pushes) does not hang on it.
func TestStalledClient(t *testing.T) {
	tr := openTestRegistryWith(t, t.TempDir(), registry.Options{BodyIdleTimeout: 300 * time.Millisecond})
	b := randBytes(2 << 20)
	r := tr.do(t, "POST", "/v2/app/blobs/uploads/", nil)
	loc := r.header.Get("Location")
	conn := tr.openPatch(t, loc, int64(len(b)))
	conn.Write(b[:1<<20])
	// The answer comes once the server gives up on the body.
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	n, _ := conn.Read(buf)
	if !strings.Contains(string(buf[:n]), "HTTP/1.1 ") {
		t.Fatalf("no answer to the stalled PATCH: %q", buf[:n])
	}
	r = tr.do(t, "GET", loc, nil)
	expect(t, r, 204, "")
	if r.header.Get("Range") != fmt.Sprintf("0-%d", 1<<20-1) {
		t.Fatalf("the session stands at %q", r.header.Get("Range"))
	}
	reindexWithin(t, tr, "Reindex hangs on a stalled upload")
}

// TestPushSlots: at most MaxActiveUploads pushes run at once; one more
// waits PushSlotWait and gets 429 with Retry-After; a session aborted while
// it waits ends at once; a trickling client does not hold Reindex, which
// aborts its session mid-body.
func TestPushSlots(t *testing.T) {
	tr := newTestRegistry(t, func(o *cache.Options) {
		o.MaxActiveUploads = 1
		o.PushSlotWait = 200 * time.Millisecond
	})
	r := tr.do(t, "POST", "/v2/app/blobs/uploads/", nil)
	holder := r.header.Get("Location")
	expect(t, tr.do(t, "PATCH", holder, []byte("x")), 202, "") // its push holds the one slot
	r = tr.do(t, "POST", "/v2/app/blobs/uploads/", nil)
	r = tr.do(t, "PATCH", r.header.Get("Location"), []byte("y"))
	expect(t, r, 429, "TOOMANYREQUESTS")
	if r.header.Get("Retry-After") == "" {
		t.Fatalf("429 without Retry-After: %v", r.header)
	}
	r = tr.do(t, "POST", "/v2/app/blobs/uploads/?digest="+string(digest.FromString("z")), []byte("z"))
	expect(t, r, 429, "TOOMANYREQUESTS") // a monolithic push needs a slot too
	// A client that trickles a body into the holding session: Reindex
	// aborts the session, cutting the body short, and finishes.
	conn := tr.openPatch(t, holder, 1000000)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond): // faster than the body idle timeout
				if _, err := conn.Write([]byte("t")); err != nil {
					return
				}
			}
		}
	}()
	waitFor(t, "the trickle to reach the session", func() bool {
		r := tr.do(t, "GET", holder, nil)
		return r.status == 204 && r.header.Get("Range") != "0-0"
	})
	reindexWithin(t, tr, "Reindex waits for a trickling client")
	expect(t, tr.do(t, "GET", holder, nil), 404, "BLOB_UPLOAD_UNKNOWN")
	// The slot is free again.
	tr.pushBlob(t, "app", []byte("after"))
}

// TestAbortCutsBody: aborting a session whose client has gone silent
// mid-body (its connection open, the body idle timeout far off) ends the
// read at once: Reindex, which aborts every session and waits for their
// pushes, does not wait for the client.
func TestAbortCutsBody(t *testing.T) {
	tr := openTestRegistryWith(t, t.TempDir(), registry.Options{BodyIdleTimeout: time.Hour})
	r := tr.do(t, "POST", "/v2/app/blobs/uploads/", nil)
	loc := r.header.Get("Location")
	conn := tr.openPatch(t, loc, 1000000)
	conn.Write(randBytes(1000))
	waitFor(t, "the bytes to reach the session", func() bool {
		r := tr.do(t, "GET", loc, nil)
		return r.status == 204 && r.header.Get("Range") == "0-999"
	})
	reindexWithin(t, tr, "Reindex waits for a silent client")
}

// slowLayers delays the writes of layer manifests: a commit that takes
// longer than the body idle timeout after the body ended.
type slowLayers struct {
	backend.Store
	delay   time.Duration
	entered chan struct{} // if not nil, told when a slow Put begins
}

func (s slowLayers) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if strings.HasPrefix(key, "layers/") {
		if s.entered != nil {
			select {
			case s.entered <- struct{}{}:
			default:
			}
		}
		time.Sleep(s.delay)
	}
	return s.Store.Put(ctx, key, r, size)
}

// TestAbortSparesTheConnection: aborting a session must not touch the
// connection its last body came on, which by then carries the client's
// next request (keep-alive): a read deadline set there cancelled that
// request.
func TestAbortSparesTheConnection(t *testing.T) {
	entered := make(chan struct{}, 1)
	tr := openTestRegistryWith(t, t.TempDir(), registry.Options{BodyIdleTimeout: time.Hour},
		func(o *cache.Options) { o.Backend = slowLayers{o.Backend, 500 * time.Millisecond, entered} })
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1}}
	send := func(method, path string, body []byte) int {
		req, _ := http.NewRequest(method, tr.srv.URL+path, bytes.NewReader(body))
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res.StatusCode
	}
	r := tr.do(t, "POST", "/v2/app/blobs/uploads/", nil)
	loc := r.header.Get("Location")
	if code := send("PATCH", loc, randBytes(1000)); code != 202 {
		t.Fatalf("PATCH: %d", code)
	}
	// The same connection now carries a push whose commit is slow; abort
	// the session meanwhile.
	b := randBytes(50000)
	done := make(chan int, 1)
	go func() { done <- send("POST", "/v2/app/blobs/uploads/?digest="+string(digest.FromBytes(b)), b) }()
	<-entered // the POST is in its slow commit
	if n := tr.cache.ExpireUploads(time.Now().Add(2 * time.Hour)); n != 1 {
		t.Fatalf("expired %d sessions", n)
	}
	if code := <-done; code != 201 {
		t.Fatalf("the push on the aborted session's connection answered %d", code)
	}
}
