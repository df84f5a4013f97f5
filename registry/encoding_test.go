package registry_test

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// A client that accepts zstd gets an uncompressed blob zstd-encoded on the
// wire, decoding to the blob's digest; everything else gets the blob as it
// is: ranges, HEAD, compressed blobs, small blobs, clients without zstd.
func TestZstdContentEncoding(t *testing.T) {
	tr := newTestRegistry(t)
	text := []byte(strings.Repeat("a tar holds mostly text that compresses well\n", 50000))
	d := tr.pushBlob(t, "app", text)
	r := tr.do(t, "GET", "/v2/app/blobs/"+string(d), nil, "Accept-Encoding: gzip, zstd")
	expect(t, r, 200, "")
	if r.header.Get("Content-Encoding") != "zstd" || !strings.Contains(r.header.Get("Vary"), "Accept-Encoding") ||
		r.header.Get("Docker-Content-Digest") != string(d) || (r.header.Get("Content-Length") != "" && r.header.Get("Content-Length") != fmt.Sprint(len(r.body))) {
		t.Fatalf("headers %v", r.header)
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	plain, err := dec.DecodeAll(r.body, nil)
	if err != nil || !bytes.Equal(plain, text) {
		t.Fatalf("the zstd body decodes to %d bytes (%v), want the blob's %d", len(plain), err, len(text))
	}
	if len(r.body)*10 > len(text) {
		t.Errorf("%d bytes on the wire for %d of text", len(r.body), len(text))
	}

	identity := func(what string, r resp, status int, want []byte) {
		t.Helper()
		expect(t, r, status, "")
		if r.header.Get("Content-Encoding") != "" || !bytes.Equal(r.body, want) {
			t.Errorf("%s: Content-Encoding %q, %d bytes; want the blob as it is", what, r.header.Get("Content-Encoding"), len(r.body))
		}
	}
	identity("no zstd", tr.do(t, "GET", "/v2/app/blobs/"+string(d), nil, "Accept-Encoding: gzip"), 200, text)
	identity("zstd;q=0", tr.do(t, "GET", "/v2/app/blobs/"+string(d), nil, "Accept-Encoding: zstd;q=0"), 200, text)
	identity("a range", tr.do(t, "GET", "/v2/app/blobs/"+string(d), nil, "Accept-Encoding: zstd", "Range: bytes=10-99"), 206, text[10:100])
	h := tr.do(t, "HEAD", "/v2/app/blobs/"+string(d), nil, "Accept-Encoding: zstd")
	if h.header.Get("Content-Length") != fmt.Sprint(len(text)) || h.header.Get("Content-Encoding") != "" {
		t.Errorf("HEAD: %v", h.header)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(text)
	zw.Close()
	gd := tr.pushBlob(t, "app", gz.Bytes())
	identity("a gzip blob", tr.do(t, "GET", "/v2/app/blobs/"+string(gd), nil, "Accept-Encoding: zstd"), 200, gz.Bytes())
	zb := dec2(t, text)
	zd := tr.pushBlob(t, "app", zb)
	identity("a zstd blob", tr.do(t, "GET", "/v2/app/blobs/"+string(zd), nil, "Accept-Encoding: zstd"), 200, zb)
	small := text[:1000]
	sd := tr.pushBlob(t, "app", small)
	identity("a small blob", tr.do(t, "GET", "/v2/app/blobs/"+string(sd), nil, "Accept-Encoding: zstd"), 200, small)
}

// dec2 is text as a zstd frame written with EncodeAll, which no candidate
// encoder reproduces: stored as it came.
func dec2(t *testing.T, b []byte) []byte {
	t.Helper()
	e, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	return e.EncodeAll(b, nil)
}
