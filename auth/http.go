package auth

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// TokenPath is where the registry serves [HTTP.TokenHandler]; challenges
// point clients there.
const TokenPath = "/token"

// HTTPOptions tune [HTTP]. Zero fields take the defaults.
type HTTPOptions struct {
	// Realm is the base URL clients reach the registry at
	// ("https://cairn.example:5000"); challenges send them to
	// Realm+TokenPath. Default: the scheme and Host of each request, which
	// is right unless a proxy in front rewrites them.
	Realm string
	// Service is the service name of challenges and tokens. Default "cairn".
	Service string
	// Key signs bearer tokens (HMAC-SHA256), at least 32 bytes. Default: a
	// random key per process; tokens then die with the process, which
	// clients handle by fetching another. Servers behind one address share
	// a Key.
	Key []byte
	// TokenTTL is the lifetime of bearer tokens. Default 5 minutes.
	TokenTTL time.Duration
	// Logger receives the audit lines. Default: none.
	Logger *slog.Logger
	// Now is the clock, for tests. Default time.Now.
	Now func() time.Time
}

// HTTP is the registry side of auth: a middleware for the /v2/ routes and
// the token endpoint. Safe for concurrent use.
type HTTP struct {
	a    *Authenticator
	opts HTTPOptions
}

// NewHTTP returns the registry auth of a.
func NewHTTP(a *Authenticator, opts HTTPOptions) (*HTTP, error) {
	if opts.Service == "" {
		opts.Service = "cairn"
	}
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = 5 * time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	opts.Realm = strings.TrimSuffix(opts.Realm, "/")
	switch {
	case opts.Key == nil:
		opts.Key = make([]byte, 32)
		if _, err := rand.Read(opts.Key); err != nil {
			return nil, fmt.Errorf("auth: token key: %w", err)
		}
	case len(opts.Key) < 32:
		return nil, errors.New("auth: token key shorter than 32 bytes")
	}
	return &HTTP{a: a, opts: opts}, nil
}

// A ScopeFunc says what a registry request needs: action on the repository
// namespace. ok is false for a request that names no repository (the /v2/
// base); the middleware then only requires a valid login, or anonymous
// access being on at all.
type ScopeFunc func(r *http.Request) (namespace string, action Action, ok bool)

// Middleware authenticates and authorizes each request before next.
//
// Credentials: "Authorization: Basic" with the token as the password (the
// user name is ignored: docker login wants one, but the token alone says
// who the caller is, and audit lines use its name from the file);
// "Authorization: Bearer" with a token from [HTTP.TokenHandler], or with a
// cairn token itself. Without credentials the caller is anonymous.
//
// Answers: a caller without credentials, or with bad or expired ones, or
// anonymous without the scope, gets 401 UNAUTHORIZED with a Bearer
// challenge naming the scope, on every route (containerd does not ping
// /v2/ first). A bearer token that is valid but was issued for other
// scopes gets the same 401 with error="insufficient_scope", so the client
// fetches a wider one. A caller whose identity lacks the scope gets 403
// DENIED: never a 404 or a silent success, which would hide the problem
// from the token's owner.
//
// A cross-repository mount (POST ...?mount=&from=) needs read on from as
// well; without it the mount parameters are dropped, and the registry
// answers with an ordinary upload, as the distribution spec allows.
//
// next finds the identity with [FromContext]. The middleware writes the
// audit line of each POST, PUT and DELETE (PATCH only carries upload data;
// the PUT that commits it is logged), with its status.
func (h *HTTP) Middleware(next http.Handler, scope ScopeFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ns, action, scoped := scope(r)
		id, tok, err := h.credentials(r)
		if err != nil {
			h.challenge(w, r, ns, action, scoped, "invalid_token", err.Error())
			return
		}
		if id == nil {
			id = h.a.Anonymous()
		}
		if !scoped {
			// A client without credentials is challenged on the base
			// route unless anonymous clients may do everything (no
			// credentials file): clients (skopeo, crane auth) decide
			// there whether to log in at all, and one that logs in
			// anonymously comes back with a bearer token.
			if id.Anonymous && tok == nil && !id.AllowedAll(Admin) {
				h.challenge(w, r, "", 0, false, "", "authentication required")
				return
			}
			next.ServeHTTP(w, r.WithContext(NewContext(r.Context(), id)))
			return
		}
		if !allows(id, tok, action, ns) {
			switch {
			case id.Anonymous:
				h.challenge(w, r, ns, action, true, "", deny(id, action, ns).Error())
			case tok != nil && id.Allowed(action, ns):
				h.challenge(w, r, ns, action, true, "insufficient_scope", "the bearer token does not grant this scope: fetch a new one")
			default:
				writeError(w, r, http.StatusForbidden, "DENIED", deny(id, action, ns).Error(), ns, action)
			}
			return
		}
		r = r.WithContext(NewContext(r.Context(), id))
		if r.Method == http.MethodPost {
			r = dropMount(r, id, tok)
		}
		if r.Method == http.MethodPatch || h.opts.Logger == nil || action == Read {
			next.ServeHTTP(w, r)
			return
		}
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r)
		Audit(h.opts.Logger, id, action, r.Method+" "+r.URL.Path, ns, slog.Int("status", sw.status))
	})
}

// allows reports whether id, and its bearer token if any, allow a on ns.
func allows(id *Identity, tok *claims, a Action, ns string) bool {
	return id.Allowed(a, ns) && (tok == nil || tok.covers(ns, a))
}

// dropMount removes the mount parameters of an upload whose source the
// caller may not read.
func dropMount(r *http.Request, id *Identity, tok *claims) *http.Request {
	q := r.URL.Query()
	if !q.Has("mount") && !q.Has("from") {
		return r
	}
	if from := q.Get("from"); from != "" && allows(id, tok, Read, from) {
		return r
	}
	q.Del("mount")
	q.Del("from")
	u := *r.URL
	u.RawQuery = q.Encode()
	r2 := *r
	r2.URL = &u
	r2.RequestURI = u.RequestURI()
	return &r2
}

// credentials returns the caller's identity, and for a bearer token from
// the token endpoint its claims. id is nil when no credentials were sent.
func (h *HTTP) credentials(r *http.Request) (id *Identity, tok *claims, err error) {
	header := r.Header.Get("Authorization")
	if header == "" {
		return nil, nil, nil
	}
	scheme, value, _ := strings.Cut(header, " ")
	value = strings.TrimSpace(value)
	switch {
	case strings.EqualFold(scheme, "Basic"):
		_, password, ok := r.BasicAuth()
		if !ok || password == "" {
			return nil, nil, fmt.Errorf("%w: malformed Basic credentials", ErrUnauthenticated)
		}
		id, err = h.a.Login(r.Context(), ClientKey(r.RemoteAddr), password)
		return id, nil, err
	case strings.EqualFold(scheme, "Bearer") && strings.HasPrefix(value, tokenPrefix):
		id, err = h.a.Login(r.Context(), ClientKey(r.RemoteAddr), value)
		return id, nil, err
	case strings.EqualFold(scheme, "Bearer"):
		c, err := verify(h.opts.Key, value, h.opts.Now())
		if err != nil {
			return nil, nil, err
		}
		id, ok := h.a.lookup(c.Subject, c.Anonymous)
		if !ok {
			return nil, nil, fmt.Errorf("%w: the bearer token's identity %q is no longer in the credentials file", ErrUnauthenticated, c.Subject)
		}
		return id, c, nil
	}
	return nil, nil, fmt.Errorf("%w: unsupported authorization scheme %q", ErrUnauthenticated, scheme)
}

// realm is the URL of the token endpoint for r.
func (h *HTTP) realm(r *http.Request) string {
	if h.opts.Realm != "" {
		return h.opts.Realm + TokenPath
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + TokenPath
}

// challenge answers 401 with a Bearer challenge for the scope (if scoped)
// and, for a refused token, the RFC 6750 error code.
func (h *HTTP) challenge(w http.ResponseWriter, r *http.Request, ns string, a Action, scoped bool, code, msg string) {
	c := fmt.Sprintf("Bearer realm=%q,service=%q", h.realm(r), h.opts.Service)
	if scoped {
		c += fmt.Sprintf(",scope=%q", "repository:"+ns+":"+challengeActions(a))
	}
	if code != "" {
		c += fmt.Sprintf(",error=%q", code)
	}
	w.Header().Set("WWW-Authenticate", c)
	writeError(w, r, http.StatusUnauthorized, "UNAUTHORIZED", msg, ns, a)
}

// challengeActions is the action list of a challenge: a push asks for
// pull too, as the registry protocol's clients expect (a push checks what
// exists first).
func challengeActions(a Action) string {
	if a == Write {
		return "pull,push"
	}
	return a.registryName()
}

// writeError writes a registry error body (the distribution spec's
// {"errors": [...]}); HEAD answers carry none.
func writeError(w http.ResponseWriter, r *http.Request, status int, code, msg, ns string, a Action) {
	type detail struct {
		Type   string `json:"Type"`
		Name   string `json:"Name"`
		Action string `json:"Action"`
	}
	type regErr struct {
		Code    string   `json:"code"`
		Message string   `json:"message"`
		Detail  []detail `json:"detail,omitempty"`
	}
	e := regErr{Code: code, Message: msg}
	if ns != "" {
		e.Detail = []detail{{Type: "repository", Name: ns, Action: a.registryName()}}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_ = json.NewEncoder(w).Encode(map[string][]regErr{"errors": {e}})
	}
}

// statusWriter remembers the status of a response, for the audit line.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
