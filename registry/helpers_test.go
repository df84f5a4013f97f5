package registry_test

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend/fs"
	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/registry"
)

// bodyIdle is the test registries' body idle timeout: long enough for a
// client starved of CPU under -race on a loaded machine (300 ms was not).
const bodyIdle = 10 * time.Second

// testRegistry is a real registry over a real cache (Badger on disk, the
// fs backend), served on a loopback port.
type testRegistry struct {
	cache *cache.Cache
	srv   *httptest.Server
	host  string // host:port, for go-containerregistry references
	dir   string
}

func newTestRegistry(t testing.TB, opts ...func(*cache.Options)) *testRegistry {
	t.Helper()
	dir := t.TempDir()
	return openTestRegistry(t, dir, opts...)
}

func openTestRegistry(t testing.TB, dir string, opts ...func(*cache.Options)) *testRegistry {
	t.Helper()
	return openTestRegistryWith(t, dir, registry.Options{BodyIdleTimeout: bodyIdle}, opts...)
}

func openTestRegistryWith(t testing.TB, dir string, ro registry.Options, opts ...func(*cache.Options)) *testRegistry {
	t.Helper()
	store, err := fs.New(dir + "/blobs")
	if err != nil {
		t.Fatal(err)
	}
	o := cache.Options{Dir: dir + "/index", Backend: store}
	for _, f := range opts {
		f(&o)
	}
	c, err := cache.Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New(c, ro))
	tr := &testRegistry{cache: c, srv: srv, host: strings.TrimPrefix(srv.URL, "http://"), dir: dir}
	t.Cleanup(tr.close)
	return tr
}

func (tr *testRegistry) close() {
	if tr.srv != nil {
		tr.srv.Close()
		tr.srv = nil
	}
	if tr.cache != nil {
		tr.cache.Close()
		tr.cache = nil
	}
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
