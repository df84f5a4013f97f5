package auth

import (
	"net/http"
	"strings"
)

// RegistryScope is a [ScopeFunc] for the OCI distribution routes:
// /v2/<name>/blobs/..., /manifests/..., /tags/list and /referrers/... need
// the request method's action ([MethodAction]) on <name>; /v2/ and any
// other path name no repository (ok false). A registry with other routes
// wraps it.
func RegistryScope(r *http.Request) (namespace string, action Action, ok bool) {
	rest, found := strings.CutPrefix(r.URL.Path, "/v2/")
	if !found {
		return "", 0, false
	}
	// The name is before the route keyword. What follows the keyword (a
	// digest, a tag, an upload id, "list") holds no such keyword, so the
	// last one found is the route's.
	end := -1
	for _, k := range []string{"/blobs/", "/manifests/", "/tags/", "/referrers/"} {
		if i := strings.LastIndex(rest, k); i > end {
			end = i
		}
	}
	if end <= 0 {
		return "", 0, false
	}
	a, known := MethodAction(r.Method)
	if !known {
		// An unknown method on a repository route still names the
		// repository; asking for write refuses it to readers, and the
		// registry answers 405 to the others.
		a = Write
	}
	return rest[:end], a, true
}
