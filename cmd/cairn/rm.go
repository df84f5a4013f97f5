package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/client"
)

func newRmCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rm DIGEST|REPO:TAG|REPO@DIGEST...",
		Short: "Delete layers, or images of the registry, from the server",
		Long: `Rm deletes what its arguments name, each one of:

  sha256:<hex>        a layer: its record and its references to its chunks
                      go, and so do the step records that name it.
                      The chunks no layer uses any more are freed by
                      the next garbage collection (cairn gc, or cairn
                      serve's background one).
  REPO:TAG            a tag of the server's OCI registry (cairn serve
                      --registry-listen): the tag goes, its manifest stays,
                      still reachable by digest and by its other tags.
  REPO@sha256:<hex>   a manifest of the registry, with every tag of REPO
                      that names it.

REPO is the repository as the registry stores it, without the registry's
host: team/app, not 127.0.0.1:5000/team/app. The tag is what follows the
last ':' after the last '/'; an argument without '/' of the form
ALGORITHM:HEX is always a layer digest. A reference with both a tag and a
digest is refused: say which of the two goes. Deleting an image leaves its
blobs (config, layers) stored as layers, which other images may share:
cairn ls lists them and cairn rm DIGEST deletes one.

The form of every argument is checked before anything is deleted; the
server checks the names themselves. Rm goes on past a layer or image that
does not exist and then exits with status 3.`,
		Example: `  cairn rm sha256:...
  cairn rm team/app:v1 team/app:v2
  cairn rm team/app@sha256:...`,
		Args: cobra.MinimumNArgs(1),
	}
	cf := addClientFlags(a, cmd, false)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		targets := make([]rmTarget, len(args))
		for i, s := range args {
			t, err := parseRmTarget(s)
			if err != nil {
				return err
			}
			targets[i] = t
		}
		ctx, c, done, err := cf.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer done()
		type result struct {
			Digest  digest.Digest `json:"digest,omitempty"` // a layer's
			Image   string        `json:"image,omitempty"`  // REPO:TAG or REPO@DIGEST
			Deleted bool          `json:"deleted"`
			Error   string        `json:"error,omitempty"`
		}
		var results []result
		var missing, failed []error
		for _, t := range targets {
			var err error
			r := result{Digest: t.layer}
			if t.layer != "" {
				err = c.Delete(ctx, t.layer)
			} else {
				r.Image = t.image()
				err = c.DeleteImage(ctx, t.repo, t.ref)
			}
			r.Deleted = err == nil
			switch {
			case err == nil:
				if !cf.json {
					fmt.Fprintf(a.stdout, "deleted %s\n", t.name())
				}
			case errors.Is(err, client.ErrNotFound):
				r.Error = "not found"
				missing = append(missing, fmt.Errorf("%s not found on %s", t, cf.server))
			default:
				r.Error = err.Error()
				failed = append(failed, err)
			}
			results = append(results, r)
			if ctx.Err() != nil {
				break
			}
		}
		if cf.json {
			if err := cf.printJSON(results); err != nil {
				return err
			}
		}
		if len(failed) > 0 {
			for _, err := range missing {
				cf.note("cairn: %v", err)
			}
			return cf.fail(errors.Join(failed...))
		}
		if len(missing) > 0 {
			return &exitError{code: exitNotFound, err: errors.Join(missing...)}
		}
		return nil
	}
	return cmd
}

// rmTarget is one argument of rm: a layer, or an image of the registry.
type rmTarget struct {
	layer digest.Digest // a layer's digest; "" for an image
	repo  string        // an image's repository
	ref   string        // and its tag or manifest digest
}

// image is the image as people write it: REPO:TAG or REPO@DIGEST.
func (t rmTarget) image() string {
	if strings.Contains(t.ref, ":") { // a digest; a tag never holds ':'
		return t.repo + "@" + t.ref
	}
	return t.repo + ":" + t.ref
}

// name is what rm prints for a target deleted: a layer's digest alone (as
// rm always printed), an image as written.
func (t rmTarget) name() string {
	if t.layer != "" {
		return t.layer.String()
	}
	return t.image()
}

// String names the target in messages: "layer sha256:...", "image
// team/app:v1".
func (t rmTarget) String() string {
	if t.layer != "" {
		return "layer " + t.layer.String()
	}
	return "image " + t.image()
}

// rmForms is what an argument of rm may be, for error messages.
const rmForms = "want a layer digest (sha256:<64 hex digits>), REPO:TAG or REPO@sha256:<64 hex digits>"

// parseRmTarget tells a layer digest from an image reference:
//   - with an '@', REPO@DIGEST (neither a repository name nor a digest
//     holds one);
//   - without a '/', a digest if it parses as one, and an error if it looks
//     like a digest with a typo (a known algorithm, hex digits), so that a
//     mistyped layer digest is not taken for tag <hex> of a repository
//     named sha256;
//   - else REPO:TAG, the tag after the last ':' that follows the last '/'
//     (a ':' before it is a registry's port, refused below).
//
// Only the shape is checked here; the server checks names against the
// registry's grammar.
func parseRmTarget(s string) (rmTarget, error) {
	if s == "" {
		return rmTarget{}, fmt.Errorf("an empty argument: %s", rmForms)
	}
	if err := checkUTF8("argument", s); err != nil {
		return rmTarget{}, err
	}
	if repo, ds, ok := strings.Cut(s, "@"); ok {
		d, err := digest.Parse(ds)
		switch {
		case repo == "":
			return rmTarget{}, fmt.Errorf("%q: no repository before '@': %s", s, rmForms)
		case err != nil:
			return rmTarget{}, fmt.Errorf("%q: %q after '@' is not a digest (want sha256:<64 hex digits>): %v", s, ds, err)
		case tagOf(repo) >= 0:
			return rmTarget{}, fmt.Errorf("%q has both a tag and a digest: give REPO:TAG to delete the tag, or REPO@DIGEST to delete the manifest and all its tags", s)
		}
		if err := checkRepoHost(s, repo); err != nil {
			return rmTarget{}, err
		}
		return rmTarget{repo: repo, ref: d.String()}, nil
	}
	if !strings.Contains(s, "/") {
		if d, err := digest.Parse(s); err == nil {
			return rmTarget{layer: d}, nil
		}
		if looksLikeDigest(s) {
			_, err := parseDigest("layer", s)
			return rmTarget{}, err
		}
	}
	i := tagOf(s)
	if i < 0 {
		return rmTarget{}, fmt.Errorf("%q has no tag: %s", s, rmForms)
	}
	repo, tag := s[:i], s[i+1:]
	switch {
	case repo == "":
		return rmTarget{}, fmt.Errorf("%q: no repository before the tag: %s", s, rmForms)
	case tag == "":
		return rmTarget{}, fmt.Errorf("%q: an empty tag: %s", s, rmForms)
	}
	if err := checkRepoHost(s, repo); err != nil {
		return rmTarget{}, err
	}
	return rmTarget{repo: repo, ref: tag}, nil
}

// tagOf returns the index of the ':' that starts ref's tag, the last one
// after the last '/', or -1 if there is none.
func tagOf(ref string) int {
	i := strings.LastIndex(ref, ":")
	if i < strings.LastIndex(ref, "/") {
		return -1
	}
	return i
}

// checkRepoHost refuses a repository that starts with a registry's
// host:port, which no repository name holds (a ':' is not allowed in
// one): the registry stores names without their host.
func checkRepoHost(arg, repo string) error {
	first, rest, ok := strings.Cut(repo, "/")
	if ok && strings.Contains(first, ":") {
		return fmt.Errorf("%q: name the repository as the registry stores it, without its host: %s, not %s", arg, rest, repo)
	}
	return nil
}

// looksLikeDigest reports whether s is a digest algorithm, a ':' and hex
// digits only: a digest with a typo rather than a tag.
func looksLikeDigest(s string) bool {
	alg, hex, ok := strings.Cut(s, ":")
	switch digest.Algorithm(alg) {
	case digest.SHA256, digest.SHA384, digest.SHA512:
	default:
		return false
	}
	return ok && hex != "" && strings.Trim(hex, "0123456789abcdefABCDEF") == ""
}
