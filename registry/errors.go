package registry

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/cairnbuild/cairn/auth"
	"github.com/cairnbuild/cairn/cache"
)

// The distribution spec's error codes.
const (
	codeBlobUnknown         = "BLOB_UNKNOWN"
	codeBlobUploadInvalid   = "BLOB_UPLOAD_INVALID"
	codeBlobUploadUnknown   = "BLOB_UPLOAD_UNKNOWN"
	codeDigestInvalid       = "DIGEST_INVALID"
	codeManifestBlobUnknown = "MANIFEST_BLOB_UNKNOWN"
	codeManifestInvalid     = "MANIFEST_INVALID"
	codeManifestUnknown     = "MANIFEST_UNKNOWN"
	codeNameInvalid         = "NAME_INVALID"
	codeNameUnknown         = "NAME_UNKNOWN"
	codeSizeInvalid         = "SIZE_INVALID"
	codeUnsupported         = "UNSUPPORTED"
	codeTooManyRequests     = "TOOMANYREQUESTS"
	codeTagInvalid          = "TAG_INVALID"
	// Beyond the spec's list, as distribution has them.
	codeUnavailable  = "UNAVAILABLE"
	codeUnknown      = "UNKNOWN"
	codeRangeInvalid = "RANGE_INVALID"
	codeDenied       = "DENIED"
	codeUnauthorized = "UNAUTHORIZED"
)

// apiError is one error as the spec's JSON body carries it, with the HTTP
// status it goes with.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func newError(status int, code, message string) *apiError {
	return &apiError{status: status, code: code, message: message}
}

// subject says what a request was about, to tell BLOB_UNKNOWN from
// MANIFEST_UNKNOWN from NAME_UNKNOWN when the core says "not found".
type subject int

const (
	aboutBlob subject = iota
	aboutManifest
	aboutUpload
	aboutRepo
)

// classify maps an error of the core (or an *apiError of this package) to
// the spec's status and code: the only place that does.
func classify(err error, about subject) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	// The core prefixes each layer of its errors with "cache: "; once is
	// enough for a client.
	msg := strings.ReplaceAll(err.Error(), "cache: ", "")
	switch {
	case errors.Is(err, auth.ErrUnauthenticated):
		return newError(http.StatusUnauthorized, codeUnauthorized, msg)
	case errors.Is(err, auth.ErrPermissionDenied):
		return newError(http.StatusForbidden, codeDenied, msg)
	case errors.Is(err, cache.ErrTagInvalid):
		return newError(http.StatusBadRequest, codeTagInvalid, msg)
	case errors.Is(err, cache.ErrNameInvalid):
		return newError(http.StatusBadRequest, codeNameInvalid, msg)
	case errors.Is(err, cache.ErrDigestMismatch):
		return newError(http.StatusBadRequest, codeDigestInvalid, msg)
	case errors.Is(err, cache.ErrSizeMismatch):
		return newError(http.StatusBadRequest, codeSizeInvalid, msg)
	case errors.Is(err, cache.ErrManifestBlobUnknown):
		return newError(http.StatusBadRequest, codeManifestBlobUnknown, msg)
	case errors.Is(err, cache.ErrUnsupported):
		return newError(http.StatusUnsupportedMediaType, codeUnsupported, msg)
	case errors.Is(err, cache.ErrManifestInvalid):
		return newError(http.StatusBadRequest, codeManifestInvalid, msg)
	case errors.Is(err, cache.ErrInvalidArgument):
		// What is left is a malformed digest.
		if about == aboutManifest {
			return newError(http.StatusBadRequest, codeManifestInvalid, msg)
		}
		return newError(http.StatusBadRequest, codeDigestInvalid, msg)
	case errors.Is(err, cache.ErrNotFound):
		switch about {
		case aboutManifest:
			return newError(http.StatusNotFound, codeManifestUnknown, msg)
		case aboutUpload:
			return newError(http.StatusNotFound, codeBlobUploadUnknown, msg)
		case aboutRepo:
			return newError(http.StatusNotFound, codeNameUnknown, msg)
		}
		return newError(http.StatusNotFound, codeBlobUnknown, msg)
	case errors.Is(err, cache.ErrOutOfRange):
		return newError(http.StatusRequestedRangeNotSatisfiable, codeRangeInvalid, msg)
	case errors.Is(err, cache.ErrFailedPrecondition):
		return newError(http.StatusConflict, codeBlobUploadInvalid, msg)
	case errors.Is(err, cache.ErrResourceExhausted):
		if about == aboutManifest {
			return newError(http.StatusRequestEntityTooLarge, codeSizeInvalid, msg)
		}
		return newError(http.StatusTooManyRequests, codeTooManyRequests, msg)
	case errors.Is(err, cache.ErrUnavailable):
		return newError(http.StatusServiceUnavailable, codeUnavailable, msg)
	}
	return newError(http.StatusInternalServerError, codeUnknown, msg)
}

// writeError answers with the spec's error body. Server-side failures are
// logged; a client's mistakes are not (they are the client's to see).
func (h *Handler) writeError(w http.ResponseWriter, r *http.Request, err error, about subject) {
	ae := classify(err, about)
	if r.Context().Err() != nil {
		// Most likely the client went away; the answer is written anyway
		// (a write to a closed connection fails harmlessly), so that no
		// path ever answers an empty 200.
		h.log.Info("registry: request cancelled", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	if ae.status >= 500 && r.Context().Err() == nil {
		h.log.Error("registry: request failed", "method", r.Method, "path", r.URL.Path, "status", ae.status, "err", err)
	}
	body, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": ae.code, "message": ae.message}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if ae.status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "5")
	}
	w.WriteHeader(ae.status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}
