package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// A bearer token is what the token endpoint issues: a short-lived,
// HMAC-SHA256-signed statement "identity N may do these actions on these
// repositories until T". The format is ours (the protocol leaves tokens
// opaque to clients), and deliberately not a JWT: one algorithm, no
// header to negotiate.
//
//	cairnb1.<base64url(JSON claims)>.<base64url(HMAC-SHA256(key, "cairnb1." + claims))>
//
// A token only narrows: the middleware checks it against the identity's
// current scopes as well, so a token removed from the file stops its bearer
// tokens at once. A token whose file entry is replaced by another of the
// same name stays good until it expires.
const bearerPrefix = "cairnb1."

// claims is the content of a bearer token.
type claims struct {
	Subject   string  `json:"sub"`
	Anonymous bool    `json:"anon,omitempty"`
	IssuedAt  int64   `json:"iat"` // unix seconds
	Expires   int64   `json:"exp"` // unix seconds
	Access    []grant `json:"access"`
}

// grant is the registry actions granted on one repository (namespace).
type grant struct {
	Name    string   `json:"name"`
	Actions []string `json:"actions"` // "pull", "push", "delete"
}

// covers reports whether the claims grant action on namespace.
func (c *claims) covers(namespace string, a Action) bool {
	for _, g := range c.Access {
		if g.Name == namespace && slices.Contains(g.Actions, a.registryName()) {
			return true
		}
	}
	return false
}

// sign returns the token for c under key.
func sign(key []byte, c *claims) (string, error) {
	body, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	signed := bearerPrefix + base64.RawURLEncoding.EncodeToString(body)
	return signed + "." + base64.RawURLEncoding.EncodeToString(mac(key, signed)), nil
}

func mac(key []byte, s string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(s))
	return m.Sum(nil)
}

// maxSkew is how far in the future an issue time may be: clocks of one
// process do not go back much.
const maxSkew = time.Minute

// verify checks a token's signature and times and returns its claims; the
// error wraps [ErrUnauthenticated].
func verify(key []byte, token string, now time.Time) (*claims, error) {
	if !strings.HasPrefix(token, bearerPrefix) {
		return nil, fmt.Errorf("%w: not a token issued by cairn", ErrUnauthenticated)
	}
	i := strings.LastIndexByte(token, '.')
	if i < len(bearerPrefix) {
		return nil, fmt.Errorf("%w: malformed bearer token", ErrUnauthenticated)
	}
	signed, sig := token[:i], token[i+1:]
	got, err := base64.RawURLEncoding.Strict().DecodeString(sig) // Strict: one signature per token
	if err != nil || !hmac.Equal(got, mac(key, signed)) {
		return nil, fmt.Errorf("%w: bad bearer token signature", ErrUnauthenticated)
	}
	body, err := base64.RawURLEncoding.DecodeString(signed[len(bearerPrefix):])
	if err != nil {
		return nil, fmt.Errorf("%w: malformed bearer token", ErrUnauthenticated)
	}
	var c claims
	if err := json.Unmarshal(body, &c); err != nil {
		return nil, fmt.Errorf("%w: malformed bearer token", ErrUnauthenticated)
	}
	switch {
	case now.Unix() >= c.Expires:
		return nil, fmt.Errorf("%w: bearer token expired", ErrUnauthenticated)
	case time.Unix(c.IssuedAt, 0).After(now.Add(maxSkew)):
		return nil, fmt.Errorf("%w: bearer token issued in the future", ErrUnauthenticated)
	}
	return &c, nil
}

// maxScopes bounds the scopes of one token request, so that a token stays
// a header's size.
const maxScopes = 64

// parseScopes parses the scopes of a token request: each value may hold
// several, space-separated (the OAuth form). Scopes other than
// "repository:<name>:<actions>" (registry:catalog:*, unknown actions,
// invalid names) are ignored, as the protocol allows: a server grants what
// it can.
func parseScopes(values []string) ([]grant, error) {
	var want []grant
	n := 0
	for _, v := range values {
		for s := range strings.FieldsSeq(v) {
			if n++; n > maxScopes {
				return nil, errors.New("too many scopes")
			}
			typ, rest, ok := strings.Cut(s, ":")
			i := strings.LastIndexByte(rest, ':')
			if !ok || typ != "repository" || i < 0 {
				continue
			}
			name, acts := rest[:i], rest[i+1:]
			if validNamespace(name) != nil {
				continue
			}
			want = append(want, grant{Name: name, Actions: strings.Split(acts, ",")})
		}
	}
	return want, nil
}

// grantFor is the part of want that id may do: the protocol grants the
// allowed subset rather than refusing the request.
func grantFor(id *Identity, want []grant) []grant {
	var out []grant
	for _, w := range want {
		var acts []string
		for _, name := range w.Actions {
			for _, a := range registryActions(name) {
				if id.Allowed(a, w.Name) && !slices.Contains(acts, a.registryName()) {
					acts = append(acts, a.registryName())
				}
			}
		}
		if len(acts) == 0 {
			continue
		}
		if j := slices.IndexFunc(out, func(g grant) bool { return g.Name == w.Name }); j >= 0 {
			for _, a := range acts {
				if !slices.Contains(out[j].Actions, a) {
					out[j].Actions = append(out[j].Actions, a)
				}
			}
			continue
		}
		out = append(out, grant{Name: w.Name, Actions: acts})
	}
	return out
}
