package auth

import (
	"errors"
	"io"
	"log"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// TestCraneFlow drives go-containerregistry's client (what crane uses)
// against its in-memory registry behind the middleware: it pings, gets the
// challenge, fetches a token from /token with Basic credentials and pushes
// and pulls with it.
func TestCraneFlow(t *testing.T) {
	srv, _ := serveRegistry(t, httpFile, registry.New(registry.Logger(log.New(io.Discard, "", 0))), HTTPOptions{})
	host := strings.TrimPrefix(srv.URL, "http://")
	ref := func(s string) name.Reference {
		r, err := name.ParseReference(host+"/"+s, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	creds := func(token string) remote.Option {
		return remote.WithAuth(&authn.Basic{Username: "ci", Password: token})
	}
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}

	if err := remote.Write(ref("pr/1/app:v1"), img, creds("cairn_pr")); err == nil {
		t.Error("pr token pushed to pr/1/app: pr/1 is an exact pattern")
	}
	if err := remote.Write(ref("pr/1:v1"), img, creds("cairn_pr")); err != nil {
		t.Fatalf("push to its own repository: %v", err)
	}
	if _, err := remote.Image(ref("pr/1:v1"), creds("cairn_pr")); err != nil {
		t.Errorf("pull back: %v", err)
	}
	err = remote.Write(ref("main:v1"), img, creds("cairn_pr"))
	if httpStatus(err) != http.StatusForbidden || !strings.Contains(err.Error(), "DENIED") {
		t.Errorf("pr token pushing main: got %v, want 403 DENIED", err)
	}
	if err := remote.Write(ref("public/x:v1"), img, creds("cairn_admin")); err != nil {
		t.Fatalf("admin push: %v", err)
	}
	if _, err := remote.Image(ref("public/x:v1")); err != nil {
		t.Errorf("anonymous pull of a public repository: %v", err)
	}
	if _, err := remote.Image(ref("pr/1:v1")); httpStatus(err) != http.StatusUnauthorized {
		t.Errorf("anonymous pull of pr/1: got %v, want 401", err)
	}
	if _, err := remote.Image(ref("pr/1:v1"), creds("cairn_wrong")); httpStatus(err) != http.StatusUnauthorized {
		t.Errorf("wrong token: got %v, want 401", err)
	}
	if _, err := remote.Image(ref("pr/1:v1"), creds("cairn_reader")); httpStatus(err) != http.StatusForbidden {
		t.Errorf("reader on pr/1: got %v, want 403", err)
	}
}

func httpStatus(err error) int {
	var te *transport.Error
	if errors.As(err, &te) {
		return te.StatusCode
	}
	return 0
}
