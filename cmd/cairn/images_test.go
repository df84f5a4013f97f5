package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cairnbuild/cairn/client"
	"github.com/cairnbuild/cairn/cmd/internal/testserver"
	"github.com/cairnbuild/cairn/server"
)

// registryRef parses an image reference on the test registry (plain HTTP).
func registryRef(t *testing.T, host, ref string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(host+"/"+ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// pushRandomImage pushes a random image of layers layers to each of refs
// (repo:tag on the registry at host) with go-containerregistry, as crane
// does, and returns it with its size as cairn counts it: manifest, config
// and layers.
func pushRandomImage(t *testing.T, host string, layers int64, refs ...string) (v1.Image, int64) {
	t.Helper()
	img, err := random.Image(64<<10, layers)
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range refs {
		if err := remote.Write(registryRef(t, host, ref), img); err != nil {
			t.Fatalf("push %s: %v", ref, err)
		}
	}
	return img, imageSize(t, img)
}

func imageSize(t *testing.T, img v1.Image) int64 {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	size := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		size += l.Size
	}
	return size
}

func mustDigest(t *testing.T, img interface{ Digest() (v1.Hash, error) }) string {
	t.Helper()
	h, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}

func lsImagesJSON(t *testing.T, env map[string]string, args ...string) []client.ImageInfo {
	t.Helper()
	r := runClientCLI(t, env, nil, append([]string{"ls", "--images", "--json"}, args...)...)
	if r.code != 0 {
		t.Fatalf("ls --images --json: exit %d: %s", r.code, r.stderr)
	}
	var imgs []client.ImageInfo
	if err := json.Unmarshal([]byte(r.stdout), &imgs); err != nil {
		t.Fatalf("ls --images --json: %v\n%s", err, r.stdout)
	}
	return imgs
}

func imageRefs(imgs []client.ImageInfo) []string {
	out := []string{}
	for _, img := range imgs {
		out = append(out, img.Repository+":"+img.Tag)
	}
	return out
}

// TestImageCommands pushes images through the registry front with a
// registry client, then lists, counts and deletes them with ls --images,
// stat and rm over gRPC, and checks the registry sees the deletes.
func TestImageCommands(t *testing.T) {
	addr, host := testserver.StartWithRegistry(t, server.Options{})
	env := map[string]string{"CAIRN_SERVER": addr}
	cli := func(code int, args ...string) cliRun {
		t.Helper()
		r := runClientCLI(t, env, nil, args...)
		if r.code != code {
			t.Fatalf("cairn %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, code, r.stdout, r.stderr)
		}
		return r
	}

	// Nothing pushed yet: a header and no rows, an empty JSON list.
	if r := cli(0, "ls", "--images"); strings.TrimSpace(r.stdout) != "REPOSITORY  TAG  DIGEST  SIZE  STORED" {
		t.Errorf("ls --images with no images:\n%s", r.stdout)
	}
	if imgs := lsImagesJSON(t, env); imgs == nil || len(imgs) != 0 {
		t.Errorf("ls --images --json with no images = %v, want []", imgs)
	}

	app, appSize := pushRandomImage(t, host, 2, "team/app:v1", "team/app:v2", "team/app:latest")
	old, _ := pushRandomImage(t, host, 1, "team/app:old")
	lib, libSize := pushRandomImage(t, host, 3, "lib:1.0")
	// A two-platform index, both platforms pushed.
	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: app}, mutate.IndexAddendum{Add: lib})
	if err := remote.WriteIndex(registryRef(t, host, "multi/arch:main"), idx); err != nil {
		t.Fatal(err)
	}
	rawIdx, err := idx.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	appDigest, libDigest := mustDigest(t, app), mustDigest(t, lib)

	imgs := lsImagesJSON(t, env)
	wantRefs := []string{"lib:1.0", "multi/arch:main", "team/app:latest", "team/app:old", "team/app:v1", "team/app:v2"}
	if !slices.Equal(imageRefs(imgs), wantRefs) {
		t.Fatalf("ls --images --json lists %v, want %v", imageRefs(imgs), wantRefs)
	}
	for _, tc := range []struct {
		i         int
		digest    string
		size      int64
		mediaType string
	}{
		{0, libDigest, libSize, "application/vnd.oci.image.manifest.v1+json"},
		{1, mustDigest(t, idx), int64(len(rawIdx)) + appSize + libSize, "application/vnd.oci.image.index.v1+json"},
		{4, appDigest, appSize, "application/vnd.oci.image.manifest.v1+json"},
	} {
		img := imgs[tc.i]
		if img.Digest.String() != tc.digest || img.Size != tc.size || img.StoredSize <= 0 || img.Missing != 0 {
			t.Errorf("%s:%s = %+v, want digest %s, size %d, stored > 0, nothing missing", img.Repository, img.Tag, img, tc.digest, tc.size)
		}
		// random.Image's media types are Docker's; the index is OCI.
		if tc.i == 1 && img.MediaType != tc.mediaType {
			t.Errorf("%s:%s media type %q, want %q", img.Repository, img.Tag, img.MediaType, tc.mediaType)
		}
	}

	// The table: one row per tag, full digests, sizes for people.
	r := cli(0, "ls", "--images")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 7 || !strings.HasPrefix(lines[0], "REPOSITORY") {
		t.Fatalf("ls --images:\n%s", r.stdout)
	}
	if f := strings.Fields(lines[5]); len(f) < 5 || f[0] != "team/app" || f[1] != "v1" || f[2] != appDigest || f[3]+" "+f[4] != humanBytes(appSize) {
		t.Errorf("ls --images row of team/app:v1 = %q, want team/app v1 %s %s ...", lines[5], appDigest, humanBytes(appSize))
	}
	// --limit stops at that many rows, within a repository's page.
	if imgs := lsImagesJSON(t, env, "--limit", "4"); !slices.Equal(imageRefs(imgs), wantRefs[:4]) {
		t.Errorf("ls --images --limit 4 = %v, want %v", imageRefs(imgs), wantRefs[:4])
	}
	if r := cli(0, "ls", "--images", "--limit", "1"); len(strings.Split(strings.TrimSpace(r.stdout), "\n")) != 2 {
		t.Errorf("ls --images --limit 1:\n%s", r.stdout)
	}

	// stat counts them: 3 repositories, 6 tags, 6 manifests (app and old
	// in team/app, lib, and the index with its two children in
	// multi/arch: a manifest held by two repositories counts twice).
	r = cli(0, "stat")
	for _, want := range []string{"repositories  3\n", "tags          6\n", "manifests     6\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stat does not say %q:\n%s", want, r.stdout)
		}
	}
	var st client.Stats
	if err := json.Unmarshal([]byte(cli(0, "stat", "--json").stdout), &st); err != nil || st.Repositories != 3 || st.Tags != 6 || st.Manifests != 6 {
		t.Errorf("stat --json = %+v (%v), want 3 repositories, 6 tags, 6 manifests", st, err)
	}

	// rm a tag: it alone goes; the registry no longer serves it.
	if r := cli(0, "rm", "team/app:v2"); r.stdout != "deleted team/app:v2\n" {
		t.Errorf("rm team/app:v2 printed %q", r.stdout)
	}
	if _, err := remote.Head(registryRef(t, host, "team/app:v2")); err == nil {
		t.Error("the registry still serves team/app:v2 after rm")
	}
	if _, err := remote.Head(registryRef(t, host, "team/app:v1")); err != nil {
		t.Errorf("team/app:v1 after rm team/app:v2: %v", err)
	}
	// rm by digest: the manifest and every tag naming it, in that
	// repository only (multi/arch still holds it).
	r = cli(0, "rm", "team/app@"+appDigest, "--json")
	var results []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &results); err != nil || len(results) != 1 ||
		results[0]["image"] != "team/app@"+appDigest || results[0]["deleted"] != true || results[0]["digest"] != nil {
		t.Errorf("rm REPO@DIGEST --json = %s (%v)", r.stdout, err)
	}
	if got, want := imageRefs(lsImagesJSON(t, env)), []string{"lib:1.0", "multi/arch:main", "team/app:old"}; !slices.Equal(got, want) {
		t.Errorf("after rm team/app:v2 and team/app@%s: %v, want %v", appDigest, got, want)
	}
	if _, err := remote.Head(registryRef(t, host, "multi/arch@"+appDigest)); err != nil {
		t.Errorf("multi/arch's copy of the deleted manifest: %v", err)
	}

	// Missing ones: exit 3, each named, the others still deleted; a layer
	// and an image in one call.
	layers, err := client.Dial(t.Context(), addr)
	if err != nil {
		t.Fatal(err)
	}
	defer layers.Close()
	oldLayers, _ := old.Layers()
	oldLayer, _ := oldLayers[0].Digest()
	r = cli(exitNotFound, "rm", "team/app:v2", "team/app:old", "team/app@"+appDigest, oldLayer.String())
	for _, want := range []string{"image team/app:v2 not found on " + addr, "image team/app@" + appDigest + " not found"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("rm of missing images: stderr %q does not say %q", r.stderr, want)
		}
	}
	if r.stdout != "deleted team/app:old\ndeleted "+oldLayer.String()+"\n" {
		t.Errorf("rm of missing and present images printed %q", r.stdout)
	}
	if _, err := layers.Stat(t.Context(), digest.Digest(oldLayer.String())); err == nil {
		t.Errorf("layer %s still there after rm", oldLayer)
	}

	// Names the registry refuses: exit 1 with the server's reason.
	r = cli(exitFailure, "rm", "Team/App:v1")
	if !strings.Contains(r.stderr, "repository") || !strings.Contains(r.stderr, "lower-case") {
		t.Errorf("rm of an upper-case repository: %q", r.stderr)
	}
}

// TestRmArguments checks that rm tells layers from images, and refuses
// what is neither before it connects.
func TestRmArguments(t *testing.T) {
	d := digest.FromString("x").String()
	for _, tc := range []struct {
		arg  string
		want rmTarget
		err  string // a part of the error; "" for none
	}{
		{arg: d, want: rmTarget{layer: digest.Digest(d)}},
		{arg: "sha512:" + strings.Repeat("ab", 64), want: rmTarget{layer: digest.Digest("sha512:" + strings.Repeat("ab", 64))}},
		{arg: "team/app:v1", want: rmTarget{repo: "team/app", ref: "v1"}},
		{arg: "app:v1", want: rmTarget{repo: "app", ref: "v1"}},
		{arg: "a/b/c:1.2.3-rc_1", want: rmTarget{repo: "a/b/c", ref: "1.2.3-rc_1"}},
		{arg: "team/app@" + d, want: rmTarget{repo: "team/app", ref: d}},
		{arg: "app@" + d, want: rmTarget{repo: "app", ref: d}},
		// A repository named like an algorithm, with a tag that is no hex.
		{arg: "sha256:latest", want: rmTarget{repo: "sha256", ref: "latest"}},
		{arg: "sha256:abc", err: "is not a digest"},
		{arg: "sha256:" + strings.Repeat("A", 64), err: "is not a digest"},
		{arg: "team/app", err: "has no tag"},
		{arg: "app", err: "has no tag"},
		{arg: "team/app:", err: "an empty tag"},
		{arg: ":v1", err: "no repository"},
		{arg: "", err: "an empty argument"},
		{arg: "team/app@sha256:abc", err: "after '@' is not a digest"},
		{arg: "team/app@v1", err: "after '@' is not a digest"},
		{arg: "@" + d, err: "no repository before '@'"},
		{arg: "team/app:v1@" + d, err: "both a tag and a digest"},
		{arg: "127.0.0.1:5000/team/app:v1", err: "without its host: team/app, not 127.0.0.1:5000/team/app"},
		{arg: "localhost:5000/team/app@" + d, err: "without its host"},
		{arg: "localhost:5000/team/app", err: "has no tag"},
	} {
		t.Run(tc.arg, func(t *testing.T) {
			got, err := parseRmTarget(tc.arg)
			switch {
			case tc.err == "" && err != nil:
				t.Errorf("parseRmTarget(%q): %v", tc.arg, err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Errorf("parseRmTarget(%q) = %+v, %v; want an error saying %q", tc.arg, got, err, tc.err)
			case tc.err == "" && got != tc.want:
				t.Errorf("parseRmTarget(%q) = %+v, want %+v", tc.arg, got, tc.want)
			}
		})
	}

	// A bad argument fails the whole call before anything is deleted: the
	// server is never dialled.
	r := runClientCLI(t, map[string]string{"CAIRN_SERVER": "127.0.0.1:1"}, nil, "rm", d, "team/app")
	if r.code != exitFailure || !strings.Contains(r.stderr, `"team/app" has no tag`) || strings.Contains(r.stderr, "cairn serve") {
		t.Errorf("rm with a bad argument: exit %d, stderr %q; want exit 1 naming the argument, before connecting", r.code, r.stderr)
	}
}

// TestLsImagesLimit checks that ls --images follows the pages, and with
// --limit reads only the pages it shows.
func TestLsImagesLimit(t *testing.T) {
	reg := prometheus.NewRegistry()
	addr, host := testserver.StartWithRegistry(t, server.Options{Registerer: reg})
	env := map[string]string{"CAIRN_SERVER": addr}
	calls := func() float64 { return rpcCount(t, reg, "RegistryService/ListImages") }
	img, err := random.Image(1<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	// 150 repositories of one tag: two pages at the server's default 100.
	for i := range 150 {
		if err := remote.Write(registryRef(t, host, fmt.Sprintf("r/%03d:t", i)), img); err != nil {
			t.Fatal(err)
		}
	}
	before := calls()
	if imgs := lsImagesJSON(t, env); len(imgs) != 150 || imgs[149].Repository != "r/149" {
		t.Fatalf("ls --images lists %d images, want 150", len(imgs))
	}
	if n := calls() - before; n != 2 {
		t.Errorf("ls --images made %v ListImages calls, want 2 (one per page)", n)
	}
	if imgs := lsImagesJSON(t, env, "--limit", "120"); len(imgs) != 120 || imgs[119].Repository != "r/119" {
		t.Errorf("ls --images --limit 120 lists %d images, want 120", len(imgs))
	}
	before = calls()
	if imgs := lsImagesJSON(t, env, "--limit", "30"); len(imgs) != 30 || imgs[29].Repository != "r/029" {
		t.Errorf("ls --images --limit 30 lists %d images, want 30", len(imgs))
	}
	if n := calls() - before; n != 1 {
		t.Errorf("ls --images --limit 30 made %v ListImages calls, want 1", n)
	}
}
