// Package ocimanifest parses and checks the manifests a registry accepts:
// OCI image manifests and indexes (artifacts among them, by artifactType
// or config media type) and Docker schema 2 manifests and manifest lists.
// It is pure: it returns what a manifest references, and the caller checks
// that those exist.
//
// The document types are image-spec's (github.com/opencontainers/image-spec),
// not hand-written copies: the field names and JSON tags are the spec's own.
package ocimanifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"mime"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Media types of the manifests this package knows.
const (
	OCIManifest       = v1.MediaTypeImageManifest
	OCIIndex          = v1.MediaTypeImageIndex
	DockerManifest    = "application/vnd.docker.distribution.manifest.v2+json"
	DockerList        = "application/vnd.docker.distribution.manifest.list.v2+json"
	dockerSchema1     = "application/vnd.docker.distribution.manifest.v1+json"
	dockerSchema1Sign = "application/vnd.docker.distribution.manifest.v1+prettyjws"
)

// IsManifest reports whether mediaType is one of the manifest media types
// this package parses: an index's child with such a type is a manifest
// that must exist; any other child is a blob (BuildKit's legacy cache
// format lists its layers in an index that way).
func IsManifest(mediaType string) bool {
	switch mediaType {
	case OCIManifest, OCIIndex, DockerManifest, DockerList:
		return true
	}
	return false
}

// ErrInvalid is wrapped by every error Parse returns.
var ErrInvalid = errors.New("manifest invalid")

// ErrUnsupported reports a manifest of a known but unsupported kind
// (Docker schema 1).
var ErrUnsupported = errors.New("manifest unsupported")

// Ref is one reference a manifest makes.
type Ref struct {
	Digest digest.Digest
	Size   int64
	// Manifest is true for a child manifest of an index.
	Manifest bool
	// Checked is false for a reference the registry need not hold: a blob
	// child of an index, or a layer with external URLs (Docker's foreign
	// layers).
	Checked bool
}

// Manifest is what Parse learnt of a manifest.
type Manifest struct {
	MediaType    string
	ArtifactType string
	Subject      *v1.Descriptor
	Annotations  map[string]string
	Refs         []Ref
}

// shape holds the fields of every kind at once: which are present tells
// the kind when neither the body nor the request names a media type.
type shape struct {
	SchemaVersion *int              `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	ArtifactType  string            `json:"artifactType"`
	Config        *v1.Descriptor    `json:"config"`
	Layers        []v1.Descriptor   `json:"layers"`
	Manifests     []v1.Descriptor   `json:"manifests"`
	Subject       *v1.Descriptor    `json:"subject"`
	Annotations   map[string]string `json:"annotations"`
	FSLayers      json.RawMessage   `json:"fsLayers"`
}

// Parse checks manifest body sent with the request's Content-Type
// contentType ("" if none) and returns its media type and references. The
// media type is the body's mediaType field, else contentType, else what the
// document's shape says; when both are given they must agree.
func Parse(contentType string, body []byte) (Manifest, error) {
	var m Manifest
	if ct, _, err := mime.ParseMediaType(contentType); err == nil {
		contentType = ct
	} else if contentType != "" {
		return m, fmt.Errorf("%w: content type %q: %v", ErrInvalid, contentType, err)
	}
	if !json.Valid(body) {
		return m, fmt.Errorf("%w: not valid JSON", ErrInvalid)
	}
	var s shape
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&s); err != nil {
		return m, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	mt := s.MediaType
	switch {
	case mt != "" && contentType != "" && contentType != mt && contentType != "application/json":
		return m, fmt.Errorf("%w: content type %q but the manifest says mediaType %q", ErrInvalid, contentType, mt)
	case mt == "" && contentType != "" && contentType != "application/json":
		mt = contentType
	case mt == "" && s.Manifests != nil:
		mt = OCIIndex
	case mt == "" && s.Config != nil:
		mt = OCIManifest
	}
	switch mt {
	case dockerSchema1, dockerSchema1Sign:
		return m, fmt.Errorf("%w: Docker schema 1 manifests (%s)", ErrUnsupported, mt)
	case OCIManifest, DockerManifest, OCIIndex, DockerList:
	case "":
		if s.FSLayers != nil {
			return m, fmt.Errorf("%w: Docker schema 1 manifests", ErrUnsupported)
		}
		return m, fmt.Errorf("%w: no media type, and neither config nor manifests", ErrInvalid)
	default:
		return m, fmt.Errorf("%w: unknown manifest media type %q", ErrInvalid, mt)
	}
	if s.SchemaVersion == nil || *s.SchemaVersion != 2 {
		return m, fmt.Errorf("%w: schemaVersion must be 2", ErrInvalid)
	}
	m.MediaType, m.ArtifactType, m.Annotations = mt, s.ArtifactType, s.Annotations
	if s.Subject != nil {
		if err := checkDescriptor("subject", *s.Subject); err != nil {
			return m, err
		}
		m.Subject = s.Subject
	}
	switch mt {
	case OCIManifest, DockerManifest:
		if s.Manifests != nil {
			return m, fmt.Errorf("%w: an image manifest with manifests", ErrInvalid)
		}
		if s.Config == nil {
			return m, fmt.Errorf("%w: no config", ErrInvalid)
		}
		if err := checkDescriptor("config", *s.Config); err != nil {
			return m, err
		}
		m.Refs = append(m.Refs, Ref{Digest: s.Config.Digest, Size: s.Config.Size, Checked: true})
		for i, l := range s.Layers {
			if err := checkDescriptor(fmt.Sprintf("layers[%d]", i), l); err != nil {
				return m, err
			}
			m.Refs = append(m.Refs, Ref{Digest: l.Digest, Size: l.Size, Checked: len(l.URLs) == 0})
		}
		if m.ArtifactType == "" && mt == OCIManifest {
			// The spec's rule for referrers: without an artifactType, a
			// manifest's is its config's media type.
			m.ArtifactType = s.Config.MediaType
		}
	default:
		if s.Config != nil || s.Layers != nil {
			return m, fmt.Errorf("%w: an index with config or layers", ErrInvalid)
		}
		for i, c := range s.Manifests {
			if err := checkDescriptor(fmt.Sprintf("manifests[%d]", i), c); err != nil {
				return m, err
			}
			child := IsManifest(c.MediaType)
			m.Refs = append(m.Refs, Ref{Digest: c.Digest, Size: c.Size, Manifest: child, Checked: child})
		}
	}
	return m, nil
}

func checkDescriptor(where string, d v1.Descriptor) error {
	if d.MediaType == "" {
		return fmt.Errorf("%w: %s: no mediaType", ErrInvalid, where)
	}
	if err := d.Digest.Validate(); err != nil {
		return fmt.Errorf("%w: %s: digest %q: %v", ErrInvalid, where, d.Digest, err)
	}
	if a := d.Digest.Algorithm(); a != digest.SHA256 && a != digest.SHA512 {
		return fmt.Errorf("%w: %s: digest algorithm %q", ErrInvalid, where, a)
	}
	if d.Size < 0 {
		return fmt.Errorf("%w: %s: negative size", ErrInvalid, where)
	}
	return nil
}
