// Package registry serves the OCI Distribution API (v1.1) over cairn's
// store, so that BuildKit, buildx, docker, crane, skopeo and every other
// registry client can push to and pull from cairn, and use it as their
// --cache-to/--cache-from target.
//
// It is an HTTP adapter only: it parses requests, calls the small
// interfaces below (which the core, *cache.Cache, implements), and maps
// the core's errors to the spec's codes in one place (errors.go). Blobs are
// cairn layers, chunked and deduplicated with everything else.
//
// Beyond the spec, it answers what real clients insist on (read from their
// sources): 201 on a mount POST means "already there" to containerd; a
// manifest HEAD carries Docker-Content-Digest and Content-Length; docker's
// pusher needs Range and Location on every PATCH response; the streamed
// PATCH without Content-Range (docker, go-containerregistry,
// containers/image) is accepted; a final PUT answers 201.
package registry

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cairnbuild/cairn/auth"
	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/transfer"
	"github.com/opencontainers/go-digest"
)

// Blobs is what the registry needs of blob storage: blobs as repositories
// see them (a repository sees a blob once it was pushed or mounted there).
type Blobs interface {
	StatBlob(ctx context.Context, repo string, d digest.Digest) (cache.BlobInfo, error)
	OpenBlob(ctx context.Context, repo string, d digest.Digest, offset, length int64) (io.ReadCloser, cache.BlobInfo, error)
	PushBlob(ctx context.Context, repo string, r io.Reader, d digest.Digest, size int64) (cache.BlobInfo, error)
	MountBlob(ctx context.Context, repo, from string, d digest.Digest) (cache.BlobInfo, error)
	DeleteBlob(ctx context.Context, repo string, d digest.Digest) error
}

// Uploads is what the registry needs of upload sessions.
type Uploads interface {
	StartUpload(ctx context.Context, owner string) (*cache.Upload, error)
	GetUpload(owner, id string) (*cache.Upload, error)
	CommitUpload(ctx context.Context, repo string, u *cache.Upload, d digest.Digest) (cache.BlobInfo, error)
}

// Manifests is what the registry needs of manifests, tags and
// repositories.
type Manifests interface {
	PutManifestTags(ctx context.Context, repo, ref, contentType string, body io.Reader, maxSize int64, tags []string) (cache.ManifestInfo, error)
	StatManifest(ctx context.Context, repo, ref string) (cache.ManifestInfo, error)
	OpenManifest(ctx context.Context, repo, ref string) (io.ReadCloser, cache.ManifestInfo, error)
	DeleteManifest(ctx context.Context, repo, ref string) error
	Tags(ctx context.Context, repo, last string, n int) ([]string, bool, error)
	Repositories(ctx context.Context, last string, n int) ([]string, bool, error)
	Referrers(ctx context.Context, repo string, d digest.Digest, artifactType string) ([]cache.ManifestInfo, error)
}

// Store is everything the registry uses; *cache.Cache implements it.
type Store interface {
	Blobs
	Uploads
	Manifests
}

// Options configure a Handler.
type Options struct {
	// MaxManifestSize bounds a manifest PUT; zero means
	// cache.DefaultMaxManifestSize (16 MiB).
	MaxManifestSize int64
	// Logger receives server-side failures; nil discards them.
	Logger *slog.Logger
	// BodyIdleTimeout fails an upload request whose client sends nothing
	// for this long; zero means DefaultBodyIdleTimeout.
	BodyIdleTimeout time.Duration
	// SendIdleTimeout cuts a blob or manifest download whose client reads
	// nothing for this long (the connection's write deadline, moved on as
	// writes succeed): its reader and transfer slot are freed, and it is
	// logged as a stalled client. Zero means DefaultSendIdleTimeout.
	SendIdleTimeout time.Duration
	// Transfers, if set, bounds the blob downloads (GET) served at once,
	// in total and per client (the request's remote IP address; see
	// package transfer): more wait for a slot. cmd/cairn gives the
	// registry the gRPC server's limiter, so that one bound covers both.
	// Nil means no bound. Uploads are bounded by the core's upload
	// sessions (cache.Options.MaxUploads), manifests are small.
	Transfers *transfer.Limiter
	// Auth checks every request (package auth: Basic credentials, whose
	// password is a token, and the bearer tokens of its /token endpoint,
	// which the handler serves): a 401 with a Bearer challenge on every
	// protected route, a 403 DENIED for a caller without the scope. Nil
	// lets everyone do everything, as without a credentials file.
	Auth *auth.HTTP
}

// DefaultBodyIdleTimeout is Options.BodyIdleTimeout's default, as the gRPC
// server's stream idle timeout.
const DefaultBodyIdleTimeout = time.Minute

// DefaultSendIdleTimeout is Options.SendIdleTimeout's default, as the gRPC
// server's send idle timeout.
const DefaultSendIdleTimeout = time.Minute

// Handler serves the Distribution API under /v2/.
type Handler struct {
	store     Store
	maxMan    int64
	bodyIdle  time.Duration
	sendIdle  time.Duration
	transfers *transfer.Limiter
	log       *slog.Logger
	metrics   *Metrics
	authed    http.Handler // serve behind Options.Auth's middleware
	token     http.Handler // Options.Auth's token endpoint
}

// New returns a Handler over store.
func New(store Store, opts Options) *Handler {
	if opts.MaxManifestSize <= 0 {
		opts.MaxManifestSize = cache.DefaultMaxManifestSize
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.BodyIdleTimeout <= 0 {
		opts.BodyIdleTimeout = DefaultBodyIdleTimeout
	}
	if opts.SendIdleTimeout <= 0 {
		opts.SendIdleTimeout = DefaultSendIdleTimeout
	}
	h := &Handler{store: store, maxMan: opts.MaxManifestSize, log: opts.Logger, bodyIdle: opts.BodyIdleTimeout,
		sendIdle: opts.SendIdleTimeout, transfers: opts.Transfers}
	a := opts.Auth
	if a == nil {
		a = allowAll
	}
	h.authed = a.Middleware(http.HandlerFunc(h.serve), scope)
	h.token = a.TokenHandler()
	return h
}

// allowAll is the auth of a registry without a credentials file: every
// caller is the anonymous identity, allowed everything.
var allowAll = func() *auth.HTTP {
	a, err := auth.NewHTTP(auth.AllowAll(), auth.HTTPOptions{})
	if err != nil {
		panic(err)
	}
	return a
}()

// scope is what a request needs (auth.ScopeFunc): the request method's
// action on the repository its route names; the catalog, which names
// every repository, read on all ("*"). The base route only authenticates.
func scope(r *http.Request) (string, auth.Action, bool) {
	rt, ok := parseRoute(r.URL.Path)
	if ok && rt.kind == "catalog" {
		return "*", auth.Read, true
	}
	if !ok || rt.name == "" {
		return "", 0, false
	}
	a, known := auth.MethodAction(r.Method)
	if !known {
		a = auth.Write // the registry answers 405 to whoever may write
	}
	return rt.name, a, true
}

// route is a parsed request path.
type route struct {
	kind string // "base", "catalog", "blob", "uploads", "upload", "manifest", "tags", "referrers"
	name string
	ref  string // digest, tag or upload id
}

// parseRoute splits /v2/<name>/<kind>/<ref>. Names contain '/', so the
// kind is found from the end: the last segments decide.
func parseRoute(path string) (route, bool) {
	p, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		if path == "/v2" {
			return route{kind: "base"}, true
		}
		return route{}, false
	}
	if p == "" {
		return route{kind: "base"}, true
	}
	if p == "_catalog" {
		return route{kind: "catalog"}, true
	}
	segs := strings.Split(p, "/")
	n := len(segs)
	switch {
	case n >= 3 && segs[n-2] == "tags" && segs[n-1] == "list":
		return route{kind: "tags", name: strings.Join(segs[:n-2], "/")}, true
	case n >= 4 && segs[n-3] == "blobs" && segs[n-2] == "uploads":
		if segs[n-1] == "" {
			return route{kind: "uploads", name: strings.Join(segs[:n-3], "/")}, true
		}
		return route{kind: "upload", name: strings.Join(segs[:n-3], "/"), ref: segs[n-1]}, true
	case n >= 3 && segs[n-2] == "blobs" && segs[n-1] == "uploads":
		return route{kind: "uploads", name: strings.Join(segs[:n-2], "/")}, true
	case n >= 3 && segs[n-2] == "blobs":
		return route{kind: "blob", name: strings.Join(segs[:n-2], "/"), ref: segs[n-1]}, true
	case n >= 3 && segs[n-2] == "manifests":
		return route{kind: "manifest", name: strings.Join(segs[:n-2], "/"), ref: segs[n-1]}, true
	case n >= 3 && segs[n-2] == "referrers":
		return route{kind: "referrers", name: strings.Join(segs[:n-2], "/"), ref: segs[n-1]}, true
	}
	return route{}, false
}

// ServeHTTP serves the token endpoint, or checks the caller (Options.Auth)
// and routes the request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if r.URL.Path == auth.TokenPath {
		h.token.ServeHTTP(w, r)
		return
	}
	// Counted here, so that the answers of auth (401, 403) count too.
	if rt, ok := parseRoute(r.URL.Path); ok {
		rw := &statusWriter{ResponseWriter: w}
		defer func() { h.metrics.observe(rt.kind, r.Method, rw.status) }()
		w = rw
	}
	h.authed.ServeHTTP(w, r)
}

// serve routes a request whose caller auth let through.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request) {
	rt, ok := parseRoute(r.URL.Path)
	if !ok {
		h.writeError(w, r, newError(http.StatusNotFound, codeNameUnknown, "no such endpoint: "+clip(r.URL.Path)), aboutRepo)
		return
	}
	if rt.name != "" {
		if err := cache.ValidRepoName(rt.name); err != nil {
			h.writeError(w, r, err, aboutRepo)
			return
		}
	}
	methods := routes[rt.kind]
	if fn, ok := methods[r.Method]; ok {
		fn(h, w, r, rt)
		return
	}
	allow := make([]string, 0, len(methods))
	for m := range methods {
		allow = append(allow, m)
	}
	sort.Strings(allow)
	h.methodNotAllowed(w, r, strings.Join(allow, ", "))
}

type handlerFunc func(h *Handler, w http.ResponseWriter, r *http.Request, rt route)

// routes maps each endpoint kind and method to its handler.
var routes = map[string]map[string]handlerFunc{
	"base": {
		http.MethodGet:  (*Handler).base,
		http.MethodHead: (*Handler).base,
	},
	"catalog": {http.MethodGet: (*Handler).catalog},
	"tags":    {http.MethodGet: (*Handler).tags},
	"blob": {
		http.MethodGet:    (*Handler).getBlob,
		http.MethodHead:   (*Handler).getBlob,
		http.MethodDelete: (*Handler).deleteBlob,
	},
	"uploads": {http.MethodPost: (*Handler).startUpload},
	"upload": {
		http.MethodGet:    (*Handler).uploadStatus,
		http.MethodPatch:  (*Handler).patchUpload,
		http.MethodPut:    (*Handler).putUpload,
		http.MethodDelete: (*Handler).deleteUpload,
	},
	"manifest": {
		http.MethodGet:    (*Handler).getManifest,
		http.MethodHead:   (*Handler).getManifest,
		http.MethodPut:    (*Handler).putManifest,
		http.MethodDelete: (*Handler).deleteManifest,
	},
	"referrers": {http.MethodGet: (*Handler).referrers},
}

func (h *Handler) base(w http.ResponseWriter, r *http.Request, _ route) {
	writeJSON(w, r, http.StatusOK, "application/json", struct{}{})
}

func (h *Handler) methodNotAllowed(w http.ResponseWriter, r *http.Request, allow string) {
	w.Header().Set("Allow", allow)
	h.writeError(w, r, newError(http.StatusMethodNotAllowed, codeUnsupported, r.Method+" is not supported here"), aboutRepo)
}

// statusWriter remembers the status for metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func writeJSON(w http.ResponseWriter, r *http.Request, status int, contentType string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(b)
	}
}

// clip shortens what an error message quotes of a request.
func clip(s string) string {
	if len(s) > 100 {
		return s[:100] + "…"
	}
	return s
}

// pageParams parses the n and last query parameters of the list
// endpoints: n absent means every entry (nAll).
func pageParams(r *http.Request) (n int, last string, err error) {
	q := r.URL.Query()
	last = q.Get("last")
	n = nAll
	if s := q.Get("n"); s != "" {
		v, perr := strconv.Atoi(s)
		if perr != nil || v < 0 {
			return 0, "", newError(http.StatusBadRequest, codeUnsupported, "n must be a non-negative integer")
		}
		n = v
	}
	return n, last, nil
}

const nAll = -1

// listPage answers a paged list endpoint (tags, catalog): n and last
// from the query, list for the page, a Link header to the next page at
// path, and body for the JSON answer.
func (h *Handler) listPage(w http.ResponseWriter, r *http.Request, path string,
	list func(last string, n int) ([]string, bool, error), body func([]string) any) {
	n, last, err := pageParams(r)
	if err != nil {
		h.writeError(w, r, err, aboutRepo)
		return
	}
	var names []string
	more := false
	if n != 0 {
		names, more, err = list(last, max(n, 0))
		if err != nil {
			h.writeError(w, r, err, aboutRepo)
			return
		}
	}
	if names == nil {
		names = []string{}
	}
	if more && len(names) > 0 {
		w.Header().Set("Link", "<"+path+"?last="+names[len(names)-1]+"&n="+strconv.Itoa(n)+`>; rel="next"`)
	}
	writeJSON(w, r, http.StatusOK, "application/json", body(names))
}

func (h *Handler) tags(w http.ResponseWriter, r *http.Request, rt route) {
	h.listPage(w, r, "/v2/"+rt.name+"/tags/list",
		func(last string, n int) ([]string, bool, error) { return h.store.Tags(r.Context(), rt.name, last, n) },
		func(tags []string) any {
			return struct {
				Name string   `json:"name"`
				Tags []string `json:"tags"`
			}{rt.name, tags}
		})
}

func (h *Handler) catalog(w http.ResponseWriter, r *http.Request, _ route) {
	h.listPage(w, r, "/v2/_catalog",
		func(last string, n int) ([]string, bool, error) { return h.store.Repositories(r.Context(), last, n) },
		func(names []string) any {
			return struct {
				Repositories []string `json:"repositories"`
			}{names}
		})
}
