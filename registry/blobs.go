package registry

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cairnbuild/cairn/auth"
	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/transfer"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

// parseDigest checks a digest from a path or query parameter.
func parseDigest(s string) (digest.Digest, error) {
	d := digest.Digest(s)
	if err := cache.ParseLayerDigest(d); err != nil {
		return "", newError(http.StatusBadRequest, codeDigestInvalid, err.Error())
	}
	return d, nil
}

// byteRange is a parsed single-range Range header.
type byteRange struct{ off, n int64 }

// parseRange reads "bytes=a-b", "bytes=a-" or "bytes=-n" against a blob of
// size bytes. ok is false when the header is absent or not a single byte
// range (then the whole blob is sent, as RFC 9110 allows); unsatisfiable
// is true for a range that starts past the end.
func parseRange(h string, size int64) (br byteRange, ok, unsatisfiable bool) {
	spec, found := strings.CutPrefix(h, "bytes=")
	if !found || strings.Contains(spec, ",") {
		return br, false, false
	}
	a, b, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return br, false, false
	}
	if a == "" { // suffix: the last b bytes
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n < 0 {
			return br, false, false
		}
		if n == 0 || size == 0 {
			return br, false, true
		}
		n = min(n, size)
		return byteRange{size - n, n}, true, false
	}
	start, err := strconv.ParseInt(a, 10, 64)
	if err != nil || start < 0 {
		return br, false, false
	}
	if start >= size {
		return br, false, true
	}
	end := size - 1
	if b != "" {
		e, err := strconv.ParseInt(b, 10, 64)
		if err != nil || e < start {
			return br, false, false
		}
		end = min(e, size-1)
	}
	return byteRange{start, end - start + 1}, true, false
}

func (h *Handler) getBlob(w http.ResponseWriter, r *http.Request, rt route) {
	d, err := parseDigest(rt.ref)
	if err != nil {
		h.writeError(w, r, err, aboutBlob)
		return
	}
	info, err := h.store.StatBlob(r.Context(), rt.name, d)
	if err != nil {
		h.writeError(w, r, err, aboutBlob)
		return
	}
	hd := w.Header()
	hd.Set("Docker-Content-Digest", string(d))
	hd.Set("Accept-Ranges", "bytes")
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("Etag", `"`+string(d)+`"`)
	hd.Set("Cache-Control", "max-age=31536000")
	status := http.StatusOK
	off, n := int64(0), info.Size
	if rh := r.Header.Get("Range"); rh != "" {
		br, ok, unsat := parseRange(rh, info.Size)
		switch {
		case unsat:
			hd.Set("Content-Range", fmt.Sprintf("bytes */%d", info.Size))
			h.writeError(w, r, newError(http.StatusRequestedRangeNotSatisfiable, codeRangeInvalid,
				fmt.Sprintf("range %q outside a blob of %d bytes", clip(rh), info.Size)), aboutBlob)
			return
		case ok:
			off, n, status = br.off, br.n, http.StatusPartialContent
			hd.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+n-1, info.Size))
		}
	}
	hd.Set("Content-Length", strconv.FormatInt(n, 10))
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return
	}
	client := transfer.Host(r.RemoteAddr)
	if id, ok := auth.FromContext(r.Context()); ok && !id.Anonymous {
		client = "token " + id.Name // the same share as the token's gRPC calls
	}
	release, err := h.transfers.Acquire(r.Context(), client)
	if err != nil {
		hd.Del("Content-Length")
		h.writeError(w, r, err, aboutBlob)
		return
	}
	defer release()
	rc, _, err := h.store.OpenBlob(r.Context(), rt.name, d, off, n)
	if err != nil {
		hd.Del("Content-Length")
		h.writeError(w, r, err, aboutBlob)
		return
	}
	defer rc.Close()
	out := h.sendBody(w)
	var body io.Reader = rc
	if status == http.StatusOK && r.Method == http.MethodGet && info.Rebuilt == "" && info.Size >= minZstdEncoding {
		// A client that accepts zstd (containerd 2 does) gets an
		// uncompressed blob compressed on the wire; the digest is that of
		// the decoded bytes.
		hd.Add("Vary", "Accept-Encoding")
		if acceptsZstd(r.Header.Get("Accept-Encoding")) {
			br := bufio.NewReaderSize(rc, 64<<10)
			head, _ := br.Peek(4)
			body = br
			if !alreadyCompressed(head) {
				hd.Del("Content-Length")
				hd.Set("Content-Encoding", "zstd")
				hd.Set("Etag", `"`+string(d)+`+zstd"`)
				w.WriteHeader(status)
				n, err := copyZstd(out, br)
				h.metrics.addOut(n)
				if err != nil {
					h.logStall(r, err)
					// A chunked response ends cleanly when the handler
					// returns: abort the connection instead, so the client
					// sees a broken transfer, never a shorter blob.
					panic(http.ErrAbortHandler)
				}
				return
			}
		}
	}
	w.WriteHeader(status)
	h.copyOut(out, r, body)
}

// minZstdEncoding is the smallest blob served zstd-encoded: below it the
// saving is not worth a frame and an encoder.
const minZstdEncoding = 64 << 10

// acceptsZstd says whether an Accept-Encoding header accepts zstd (RFC
// 9110: a listed coding with no q, or q above 0).
func acceptsZstd(h string) bool {
	for _, part := range strings.Split(h, ",") {
		coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(coding), "zstd") {
			continue
		}
		for _, p := range strings.Split(params, ";") {
			k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
			if strings.EqualFold(k, "q") {
				q, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				return err == nil && q > 0
			}
		}
		return true
	}
	return false
}

// alreadyCompressed: gzip or zstd magic, which compress no further.
func alreadyCompressed(head []byte) bool {
	return len(head) >= 3 && head[0] == 0x1f && head[1] == 0x8b ||
		len(head) >= 4 && head[0] == 0x28 && head[1] == 0xb5 && head[2] == 0x2f && head[3] == 0xfd
}

// copyZstd streams r to w as one zstd frame, at the fastest level on one
// goroutine; n counts the blob's bytes.
func copyZstd(w io.Writer, r io.Reader) (int64, error) {
	zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(zw, r)
	if err != nil {
		zw.Reset(io.Discard) // no trailer
		return n, err
	}
	return n, zw.Close()
}

// copyOut streams a blob or manifest to the client and counts it. Once the
// status is sent, a failure can only cut the response short: the client
// sees fewer bytes than Content-Length and retries; it never gets wrong
// bytes, since the reader verifies every chunk.
func (h *Handler) copyOut(w io.Writer, r *http.Request, body io.Reader) {
	n, err := io.Copy(w, body)
	h.metrics.addOut(n)
	h.logStall(r, err)
}

// idleWriter writes a response body with a write deadline that moves
// forward as writes succeed: a client that stops reading (or a connection
// that died without a FIN) fails the write after the send idle timeout,
// instead of holding the blob's reader, its transfer slot and a goroutine
// for good. It bounds the time without progress, not the response's
// length. (net/http clears the deadline after the response, before the
// connection's next request.)
type idleWriter struct {
	w    io.Writer
	rc   *http.ResponseController
	idle time.Duration
	last time.Time // when the deadline was last moved
}

// sendBody returns w with the send idle deadline.
func (h *Handler) sendBody(w http.ResponseWriter) *idleWriter {
	return &idleWriter{w: w, rc: http.NewResponseController(w), idle: h.sendIdle}
}

func (iw *idleWriter) Write(p []byte) (int, error) {
	// As idleReader: move the deadline every quarter of the idle time at
	// most (and at most once a second).
	if now := time.Now(); now.Sub(iw.last) > min(iw.idle/4, time.Second) {
		if err := iw.rc.SetWriteDeadline(now.Add(iw.idle)); err == nil {
			iw.last = now
		}
	}
	return iw.w.Write(p)
}

// logStall logs a download cut by the send idle timeout: the client's
// trouble, at Info, so that an operator can tell who holds transfers up.
func (h *Handler) logStall(r *http.Request, err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		h.log.Info("registry: client stalled", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr,
			"err", err)
	}
}

func (h *Handler) deleteBlob(w http.ResponseWriter, r *http.Request, rt route) {
	d, err := parseDigest(rt.ref)
	if err != nil {
		h.writeError(w, r, err, aboutBlob)
		return
	}
	if err := h.store.DeleteBlob(r.Context(), rt.name, d); err != nil {
		h.writeError(w, r, err, aboutBlob)
		return
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
}

// blobCreated answers a finished upload or mount.
func blobCreated(w http.ResponseWriter, name string, d digest.Digest) {
	hd := w.Header()
	hd.Set("Location", "/v2/"+name+"/blobs/"+string(d))
	hd.Set("Docker-Content-Digest", string(d))
	hd.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
}

// uploadAccepted answers a started or continued upload: Location and
// Range on every response (docker's pusher needs both).
func uploadAccepted(w http.ResponseWriter, status int, name string, u *cache.Upload) {
	hd := w.Header()
	hd.Set("Location", "/v2/"+name+"/blobs/uploads/"+u.ID())
	hd.Set("Docker-Upload-UUID", u.ID())
	hd.Set("Range", fmt.Sprintf("0-%d", max(u.Size()-1, 0)))
	hd.Set("Content-Length", "0")
	w.WriteHeader(status)
}

// startUpload is POST /v2/<name>/blobs/uploads/: a mount (?mount=&from=),
// a monolithic upload (?digest=, the body is the blob), or the start of a
// session.
func (h *Handler) startUpload(w http.ResponseWriter, r *http.Request, rt route) {
	q := r.URL.Query()
	if m := q.Get("mount"); m != "" {
		d, err := parseDigest(m)
		if err != nil {
			h.writeError(w, r, err, aboutBlob)
			return
		}
		if from := q.Get("from"); from != "" {
			if err := cache.ValidRepoName(from); err != nil {
				h.writeError(w, r, err, aboutRepo)
				return
			}
			_, err := h.store.MountBlob(r.Context(), rt.name, from, d)
			if err == nil {
				blobCreated(w, rt.name, d)
				return
			}
			if !errors.Is(err, cache.ErrNotFound) {
				h.writeError(w, r, err, aboutBlob)
				return
			}
		}
		// Not there to mount: a normal upload, as the spec says.
	} else if ds := q.Get("digest"); ds != "" {
		d, err := parseDigest(ds)
		if err != nil {
			h.writeError(w, r, err, aboutBlob)
			return
		}
		size := r.ContentLength // -1 when chunked
		n := &countingReader{r: h.bodyOf(w, r, -1)}
		if _, err := h.store.PushBlob(r.Context(), rt.name, n, d, size); err != nil {
			h.metrics.addIn(n.n)
			h.writeError(w, r, err, aboutBlob)
			return
		}
		h.metrics.addIn(n.n)
		blobCreated(w, rt.name, d)
		return
	}
	u, err := h.store.StartUpload(r.Context(), rt.name)
	if err != nil {
		h.writeError(w, r, err, aboutUpload)
		return
	}
	uploadAccepted(w, http.StatusAccepted, rt.name, u)
}

func (h *Handler) upload(w http.ResponseWriter, r *http.Request, rt route) (*cache.Upload, bool) {
	u, err := h.store.GetUpload(rt.name, rt.ref)
	if err != nil {
		h.writeError(w, r, err, aboutUpload)
		return nil, false
	}
	return u, true
}

func (h *Handler) uploadStatus(w http.ResponseWriter, r *http.Request, rt route) {
	if u, ok := h.upload(w, r, rt); ok {
		uploadAccepted(w, http.StatusNoContent, rt.name, u)
	}
}

// parseContentRange reads a PATCH's Content-Range, "<start>-<end>" (some
// clients write "bytes <start>-<end>" or append "/<size>").
func parseContentRange(s string) (start, end int64, err error) {
	s = strings.TrimPrefix(strings.TrimSpace(s), "bytes ")
	s = strings.TrimPrefix(s, "bytes=")
	if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	a, b, ok := strings.Cut(s, "-")
	if ok {
		start, err = strconv.ParseInt(a, 10, 64)
		if err == nil {
			end, err = strconv.ParseInt(b, 10, 64)
		}
	}
	if !ok || err != nil || start < 0 || end < start {
		return 0, 0, fmt.Errorf("Content-Range %q: want <start>-<end>", clip(s))
	}
	return start, end, nil
}

// writeBody appends the request's body to u. With a Content-Range, the
// range must start where the upload stands (else 416) and the body is
// read up to its length; without one (the streamed PATCH), to its end.
func (h *Handler) writeBody(w http.ResponseWriter, r *http.Request, u *cache.Upload) bool {
	want, at := int64(-1), int64(-1)
	if cr := r.Header.Get("Content-Range"); cr != "" {
		start, end, err := parseContentRange(cr)
		if err != nil {
			h.writeError(w, r, newError(http.StatusBadRequest, codeBlobUploadInvalid, err.Error()), aboutUpload)
			return false
		}
		want, at = end-start+1, start
		if r.ContentLength >= 0 && r.ContentLength != want {
			h.writeError(w, r, newError(http.StatusBadRequest, codeSizeInvalid,
				fmt.Sprintf("Content-Length %d but Content-Range spans %d bytes", r.ContentLength, want)), aboutUpload)
			return false
		}
	}
	body := h.bodyOf(w, r, want)
	n, err := u.Write(r.Context(), body, at)
	body.finish()
	h.metrics.addIn(n)
	if errors.Is(err, cache.ErrUploadOffset) {
		// Out of order: 416 with where the upload stands, as the spec says.
		w.Header().Set("Location", r.URL.Path)
		w.Header().Set("Range", fmt.Sprintf("0-%d", max(u.Size()-1, 0)))
		h.writeError(w, r, newError(http.StatusRequestedRangeNotSatisfiable, codeBlobUploadInvalid, err.Error()), aboutUpload)
		return false
	}
	if err != nil {
		h.writeError(w, r, err, aboutUpload)
		return false
	}
	if want >= 0 && n != want {
		h.writeError(w, r, newError(http.StatusBadRequest, codeSizeInvalid,
			fmt.Sprintf("body of %d bytes, Content-Range spans %d (the upload keeps them: ask its status)", n, want)), aboutUpload)
		return false
	}
	if r.ContentLength >= 0 && n != r.ContentLength {
		h.writeError(w, r, newError(http.StatusBadRequest, codeSizeInvalid,
			fmt.Sprintf("body of %d bytes, Content-Length %d", n, r.ContentLength)), aboutUpload)
		return false
	}
	return true
}

func (h *Handler) patchUpload(w http.ResponseWriter, r *http.Request, rt route) {
	u, ok := h.upload(w, r, rt)
	if !ok {
		return
	}
	if h.writeBody(w, r, u) {
		uploadAccepted(w, http.StatusAccepted, rt.name, u)
	}
}

// putUpload is the final PUT ?digest=, with the last bytes in its body or
// none.
func (h *Handler) putUpload(w http.ResponseWriter, r *http.Request, rt route) {
	u, ok := h.upload(w, r, rt)
	if !ok {
		return
	}
	d, err := parseDigest(r.URL.Query().Get("digest"))
	if err != nil {
		h.writeError(w, r, err, aboutBlob)
		return
	}
	if r.ContentLength != 0 {
		if !h.writeBody(w, r, u) {
			return
		}
	}
	if _, err := h.store.CommitUpload(r.Context(), rt.name, u, d); err != nil {
		// A session that ended meanwhile (aborted, expired, committed by
		// a retry) is BLOB_UPLOAD_UNKNOWN; a digest mismatch stays
		// DIGEST_INVALID.
		h.writeError(w, r, err, aboutUpload)
		return
	}
	blobCreated(w, rt.name, d)
}

func (h *Handler) deleteUpload(w http.ResponseWriter, r *http.Request, rt route) {
	u, ok := h.upload(w, r, rt)
	if !ok {
		return
	}
	u.Abort()
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusNoContent)
}

// idleReader reads a request body with a read deadline that moves forward
// as bytes arrive: a client that stops sending (or a connection that died
// without a FIN) fails the read after idle, instead of holding its upload
// and the cache's shared lock for good.
type idleReader struct {
	r    io.Reader
	rc   *http.ResponseController
	idle time.Duration
	last time.Time // when the deadline was last moved

	mu       sync.Mutex
	finished bool // the handler is done with the body: Interrupt does nothing
}

// bodyOf returns r's body, at most limit bytes of it (limit < 0: all),
// read with the idle deadline.
func (h *Handler) bodyOf(w http.ResponseWriter, r *http.Request, limit int64) *idleReader {
	body := io.Reader(r.Body)
	if limit >= 0 {
		body = io.LimitReader(body, limit)
	}
	return &idleReader{r: body, rc: http.NewResponseController(w), idle: h.bodyIdle}
}

// Interrupt cuts a blocked Read short (cache.Interrupter): an aborted
// upload session stops reading at once.
// It does nothing once finish was called: the connection may then carry
// the client's next request, which a deadline would cancel.
func (ir *idleReader) Interrupt() {
	ir.mu.Lock()
	defer ir.mu.Unlock()
	if !ir.finished {
		_ = ir.rc.SetReadDeadline(time.Now())
	}
}

// finish marks the body done with (see Interrupt).
func (ir *idleReader) finish() {
	ir.mu.Lock()
	ir.finished = true
	ir.mu.Unlock()
}

func (ir *idleReader) Read(p []byte) (int, error) {
	// Moving the deadline costs a timer update: do it every quarter of
	// the idle time at most (and at most once a second).
	if now := time.Now(); now.Sub(ir.last) > min(ir.idle/4, time.Second) {
		if err := ir.rc.SetReadDeadline(now.Add(ir.idle)); err == nil {
			ir.last = now
		}
	}
	return ir.r.Read(p)
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n += int64(k)
	return k, err
}
