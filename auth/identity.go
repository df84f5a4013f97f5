package auth

import (
	"context"
	"fmt"
)

// AnonymousName is the name of the anonymous identity in audit lines and
// errors. No token may take it.
const AnonymousName = "anonymous"

// An Identity is who a caller is and what it may do. Identities are built
// by an [Authenticator] from its file and never change; a reload makes new
// ones. Safe for concurrent use.
type Identity struct {
	// Name is the token's name in the credentials file, or AnonymousName.
	Name string
	// Anonymous is true for a caller without credentials.
	Anonymous bool

	scopes []scope
}

// A scope is a set of actions over a set of namespace patterns.
type scope struct {
	actions  actionSet
	patterns []pattern
}

// Allowed reports whether the identity may do a in namespace.
func (id *Identity) Allowed(a Action, namespace string) bool {
	if id == nil {
		return false
	}
	for _, s := range id.scopes {
		if !s.actions.has(a) {
			continue
		}
		for _, p := range s.patterns {
			if p.match(namespace) {
				return true
			}
		}
	}
	return false
}

// AllowedAny reports whether the identity may do a in at least one
// namespace. That is what content-addressed data (chunks, layers by digest)
// needs: it belongs to no namespace, reading it needs its digest, and
// writing it cannot change what a digest names.
func (id *Identity) AllowedAny(a Action) bool {
	if id == nil {
		return false
	}
	for _, s := range id.scopes {
		if s.actions.has(a) && len(s.patterns) > 0 {
			return true
		}
	}
	return false
}

// AllowedAll reports whether the identity may do a in every namespace (it
// holds a over the pattern "*"). Calls that act on the whole cache (gc,
// reindex, deleting content-addressed data others may use) need it.
func (id *Identity) AllowedAll(a Action) bool {
	if id == nil {
		return false
	}
	for _, s := range id.scopes {
		if !s.actions.has(a) {
			continue
		}
		for _, p := range s.patterns {
			if p.all {
				return true
			}
		}
	}
	return false
}

// grantsNothing reports whether the identity has no scope at all: for the
// anonymous identity, that anonymous access is off.
func (id *Identity) grantsNothing() bool { return id == nil || len(id.scopes) == 0 }

// String returns the name, for logs.
func (id *Identity) String() string {
	if id == nil {
		return "<none>"
	}
	return id.Name
}

// deny is the error for id lacking a in namespace: unauthenticated for the
// anonymous identity (logging in may help), permission denied otherwise.
func deny(id *Identity, a Action, namespace string) error {
	where := fmt.Sprintf("in namespace %q", namespace)
	if namespace == "" {
		where = "in any namespace"
	}
	if id == nil || id.Anonymous {
		return fmt.Errorf("%w: anonymous clients may not %s %s: send a token", ErrUnauthenticated, a, where)
	}
	return fmt.Errorf("%w: token %q may not %s %s", ErrPermissionDenied, id.Name, a, where)
}

type ctxKey struct{}

// NewContext returns ctx carrying id.
func NewContext(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the identity the interceptor or middleware put in
// ctx.
func FromContext(ctx context.Context) (*Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(*Identity)
	return id, ok && id != nil
}

// Check returns nil if the identity in ctx may do a in namespace, and
// otherwise an error wrapping [ErrUnauthenticated] (no identity, or the
// anonymous one) or [ErrPermissionDenied]. Handlers of methods whose rule
// is Namespaced call it with each namespace they touch (every namespace of
// a lookup's list, the one of a write).
func Check(ctx context.Context, a Action, namespace string) error {
	id, ok := FromContext(ctx)
	if !ok {
		return fmt.Errorf("%w: no identity in the context", ErrUnauthenticated)
	}
	if id.Allowed(a, namespace) {
		return nil
	}
	return deny(id, a, namespace)
}
