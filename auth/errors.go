package auth

import "errors"

// The two ways a call is refused. They are kept apart because a client
// needs to know which: without credentials it should log in (401,
// UNAUTHENTICATED); with credentials that lack the scope, logging in again
// will not help and its owner must change the file (403,
// PERMISSION_DENIED). Errors of this package wrap one of them; branch with
// errors.Is.
var (
	// ErrUnauthenticated: no credentials, or credentials that are not
	// valid (an unknown or expired token), for a call anonymous clients
	// may not make.
	ErrUnauthenticated = errors.New("auth: unauthenticated")
	// ErrPermissionDenied: the credentials are valid, but their scopes do
	// not allow the call.
	ErrPermissionDenied = errors.New("auth: permission denied")
)
