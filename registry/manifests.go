package registry

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/cairnbuild/cairn/cache"
)

func (h *Handler) getManifest(w http.ResponseWriter, r *http.Request, rt route) {
	if r.Method == http.MethodHead {
		info, err := h.store.StatManifest(r.Context(), rt.name, rt.ref)
		if err != nil {
			h.writeError(w, r, err, aboutManifest)
			return
		}
		manifestHeaders(w, info)
		w.WriteHeader(http.StatusOK)
		return
	}
	rc, info, err := h.store.OpenManifest(r.Context(), rt.name, rt.ref)
	if err != nil {
		h.writeError(w, r, err, aboutManifest)
		return
	}
	defer rc.Close()
	manifestHeaders(w, info)
	w.WriteHeader(http.StatusOK)
	h.copyOut(h.sendBody(w), r, rc)
}

func manifestHeaders(w http.ResponseWriter, info cache.ManifestInfo) {
	hd := w.Header()
	hd.Set("Content-Type", info.MediaType)
	hd.Set("Content-Length", strconv.FormatInt(info.Size, 10))
	hd.Set("Docker-Content-Digest", string(info.Digest))
	hd.Set("Etag", `"`+string(info.Digest)+`"`)
}

func (h *Handler) putManifest(w http.ResponseWriter, r *http.Request, rt route) {
	if r.ContentLength > h.maxMan {
		h.writeError(w, r, newError(http.StatusRequestEntityTooLarge, codeSizeInvalid,
			fmt.Sprintf("manifest of %d bytes, at most %d", r.ContentLength, h.maxMan)), aboutManifest)
		return
	}
	// ?tag= parameters (the spec's draft): more tags for a PUT by digest.
	tags := r.URL.Query()["tag"]
	info, err := h.store.PutManifestTags(r.Context(), rt.name, rt.ref, r.Header.Get("Content-Type"), h.bodyOf(w, r, -1), h.maxMan, tags)
	if err != nil {
		h.writeError(w, r, err, aboutManifest)
		return
	}
	hd := w.Header()
	for _, t := range tags {
		hd.Add("OCI-Tag", t)
	}
	hd.Set("Location", "/v2/"+rt.name+"/manifests/"+string(info.Digest))
	hd.Set("Docker-Content-Digest", string(info.Digest))
	if info.Subject != "" {
		hd.Set("OCI-Subject", string(info.Subject))
	}
	hd.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
}

func (h *Handler) deleteManifest(w http.ResponseWriter, r *http.Request, rt route) {
	if err := h.store.DeleteManifest(r.Context(), rt.name, rt.ref); err != nil {
		h.writeError(w, r, err, aboutManifest)
		return
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
}

// descriptor is an OCI descriptor in a referrers response.
type descriptor struct {
	MediaType    string            `json:"mediaType"`
	Digest       string            `json:"digest"`
	Size         int64             `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

// referrers answers GET /v2/<name>/referrers/<digest>: an image index of
// the manifests whose subject is digest, filtered by ?artifactType=.
func (h *Handler) referrers(w http.ResponseWriter, r *http.Request, rt route) {
	d, err := parseDigest(rt.ref)
	if err != nil {
		h.writeError(w, r, err, aboutManifest)
		return
	}
	at := r.URL.Query().Get("artifactType")
	rs, err := h.store.Referrers(r.Context(), rt.name, d, at)
	if err != nil {
		h.writeError(w, r, err, aboutManifest)
		return
	}
	out := struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Manifests     []descriptor `json:"manifests"`
	}{2, "application/vnd.oci.image.index.v1+json", make([]descriptor, 0, len(rs))}
	for _, m := range rs {
		out.Manifests = append(out.Manifests, descriptor{MediaType: m.MediaType, Digest: string(m.Digest), Size: m.Size,
			ArtifactType: m.ArtifactType, Annotations: m.Annotations})
	}
	if at != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	writeJSON(w, r, http.StatusOK, out.MediaType, out)
}
