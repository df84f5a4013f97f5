package auth

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// TokenHandler serves the registry token endpoint at [TokenPath]:
//
//   - GET /token?service=cairn&scope=repository:<name>:pull,push&scope=...
//     with Basic credentials (the password is the token) or none, as
//     docker, crane and skopeo ask;
//   - POST /token with an OAuth2 form (grant_type=password with the token
//     as password, or grant_type=refresh_token with the token as
//     refresh_token), as containerd and BuildKit ask first.
//
// It answers {"token", "access_token", "expires_in", "issued_at"}: a
// bearer token for TokenTTL granting the part of the requested scopes the
// caller holds (the protocol grants what is allowed rather than failing;
// the registry then answers 403 for the rest). Without credentials the
// caller gets an anonymous token when the file gives anonymous clients
// anything, and a 401 otherwise; bad credentials get a 401.
func (h *HTTP) TokenHandler() http.Handler {
	return http.HandlerFunc(h.serveToken)
}

// tokenResponse is the token endpoint's answer: both field names, since
// clients read one or the other.
type tokenResponse struct {
	Token       string `json:"token"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
	IssuedAt    string `json:"issued_at"`
	Scope       string `json:"scope,omitempty"`
}

func (h *HTTP) serveToken(w http.ResponseWriter, r *http.Request) {
	var (
		scopes []string
		secret string
		sent   bool
	)
	switch r.Method {
	case http.MethodGet:
		scopes = r.URL.Query()["scope"]
	case http.MethodPost:
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := r.ParseForm(); err != nil {
			oauthError(w, http.StatusBadRequest, "invalid_request", "cannot parse the form")
			return
		}
		scopes = r.PostForm["scope"]
		switch gt := r.PostForm.Get("grant_type"); gt {
		case "password":
			secret, sent = r.PostForm.Get("password"), true
		case "refresh_token":
			secret, sent = r.PostForm.Get("refresh_token"), true
		case "":
		default:
			oauthError(w, http.StatusBadRequest, "unsupported_grant_type", fmt.Sprintf("grant_type %q: want password or refresh_token", gt))
			return
		}
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if !sent {
		if _, password, ok := r.BasicAuth(); ok {
			secret, sent = password, true
		} else if v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && strings.HasPrefix(v, tokenPrefix) {
			secret, sent = strings.TrimSpace(v), true
		}
	}

	var id *Identity
	if sent {
		var err error
		if id, err = h.a.Login(r.Context(), ClientKey(r.RemoteAddr), secret); err != nil {
			h.tokenUnauthorized(w, r, err.Error())
			return
		}
	} else if id = h.a.Anonymous(); id.grantsNothing() {
		h.tokenUnauthorized(w, r, "authentication required: send the token as the Basic password")
		return
	}

	want, err := parseScopes(scopes)
	if err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_scope", err.Error())
		return
	}
	now := h.opts.Now()
	c := &claims{
		Subject:   id.Name,
		Anonymous: id.Anonymous,
		IssuedAt:  now.Unix(),
		Expires:   now.Add(h.opts.TokenTTL).Unix(),
		Access:    grantFor(id, want),
	}
	tok, err := sign(h.opts.Key, c)
	if err != nil {
		oauthError(w, http.StatusInternalServerError, "server_error", err.Error())
		return
	}
	var granted []string
	for _, g := range c.Access {
		granted = append(granted, "repository:"+g.Name+":"+strings.Join(g.Actions, ","))
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(tokenResponse{
		Token:       tok,
		AccessToken: tok,
		ExpiresIn:   int64(h.opts.TokenTTL / time.Second),
		IssuedAt:    now.UTC().Format(time.RFC3339),
		Scope:       strings.Join(granted, " "),
	})
}

// tokenUnauthorized answers a token request whose credentials are missing
// or bad: 401 with a Basic challenge, the scheme the endpoint takes.
func (h *HTTP) tokenUnauthorized(w http.ResponseWriter, r *http.Request, msg string) {
	w.Header().Set("WWW-Authenticate", fmt.Sprintf("Basic realm=%q", h.opts.Service))
	writeError(w, r, http.StatusUnauthorized, "UNAUTHORIZED", msg, "", 0)
}

// oauthError writes an RFC 6749 error.
func oauthError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}
