package stepkey

import "errors"

// ErrInvalidStep is wrapped by every error this package returns: a step, a
// build arg, a platform or a digest that cannot be turned into a key. The
// server maps it to InvalidArgument; callers branch on it with errors.Is.
var ErrInvalidStep = errors.New("stepkey: invalid step")
