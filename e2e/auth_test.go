package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// An authToken is a token made by `cairn token new`: the token itself
// (what clients send) and its entry for the credentials file.
type authToken struct {
	name, token, entry string
}

// newAuthToken runs `cairn token new --name name scopeFlags...` as a user
// would.
func newAuthToken(t *testing.T, name string, scopeFlags ...string) authToken {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(cairnBin, append([]string{"token", "new", "--name", name}, scopeFlags...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("cairn token new --name %s: %v\n%s", name, err, stderr.String())
	}
	token := strings.TrimSpace(lastLine(stderr.String()))
	if !strings.HasPrefix(token, "cairn_") {
		t.Fatalf("cairn token new printed no token on stderr:\n%s", stderr.String())
	}
	// The first token's output is a whole file ("tokens:" and the entry):
	// keep the entry, to put several under one "tokens:".
	entry, ok := strings.CutPrefix(stdout.String(), "tokens:\n")
	if !ok || strings.Contains(stdout.String(), token) {
		t.Fatalf("cairn token new: stdout is not a credentials file without the token:\n%s", stdout.String())
	}
	return authToken{name: name, token: token, entry: entry}
}

// writeAuthFile writes a credentials file of the tokens, and anonymous
// (YAML list items, may be empty) as what clients without a token may do.
func writeAuthFile(t *testing.T, anonymous string, tokens ...authToken) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("tokens:\n")
	for _, tok := range tokens {
		b.WriteString(tok.entry)
	}
	if anonymous != "" {
		b.WriteString("anonymous:\n" + anonymous)
	}
	path := filepath.Join(t.TempDir(), "auth.yaml")
	writeFile(t, path, b.String())
	return path
}

// startAuthServer starts `cairn serve --auth-file file`.
func startAuthServer(t *testing.T, file string) *server {
	t.Helper()
	s := startServerWith(t, backendConfig{name: "fs"}, func(s *server) {
		s.extraArgs = append(s.extraArgs, "--auth-file", file)
	})
	if log := s.log.String(); !strings.Contains(log, "auth="+file) {
		t.Fatalf("the start-up line does not name the credentials file:\n%s", log)
	}
	return s
}

// wrongToken looks like a token but is in no credentials file.
func wrongToken() string { return "cairn_" + randomHex(16) }

// authCLI runs the cairn CLI against s sending token as CAIRN_TOKEN (none
// if empty): the caller's own CAIRN_TOKEN* variables are never passed on.
func authCLI(s *server, token string, args ...string) result {
	s.t.Helper()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CAIRN_TOKEN") && !strings.HasPrefix(kv, "CAIRN_SERVER=") {
			env = append(env, kv)
		}
	}
	env = append(env, "CAIRN_SERVER="+s.addr)
	if token != "" {
		env = append(env, "CAIRN_TOKEN="+token)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(cairnBin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatalf("cairn %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// wantCLI fails the test unless r exited with code and its stderr says
// every one of msgs.
func wantCLI(t *testing.T, r result, code int, msgs ...string) {
	t.Helper()
	if r.code != code {
		t.Errorf("want exit %d, got %v", code, r)
		return
	}
	for _, m := range msgs {
		if !strings.Contains(r.stderr, m) {
			t.Errorf("stderr does not say %q: %v", m, r)
		}
	}
}

// dockerConfig logs in to host with `crane auth login` (the password is
// the token) and returns the DOCKER_CONFIG directory holding the
// config.json, which crane, BuildKit's buildctl and skopeo all read. An
// empty token returns an empty directory: no credentials.
func dockerConfig(t *testing.T, crane, host, token string) string {
	t.Helper()
	dir := t.TempDir()
	if token == "" {
		return dir
	}
	out, err := runClient(dir, crane, "auth", "login", host, "-u", "ci", "-p", token)
	if err != nil {
		t.Fatalf("crane auth login: %v\n%s", err, out)
	}
	var cfg struct {
		Auths map[string]struct{ Auth string }
	}
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err == nil {
		err = json.Unmarshal(b, &cfg)
	}
	if want := base64.StdEncoding.EncodeToString([]byte("ci:" + token)); err != nil || cfg.Auths[host].Auth != want {
		t.Fatalf("crane auth login wrote no credentials for %s: %v\n%s", host, err, b)
	}
	return dir
}

// runClient runs a registry client with DOCKER_CONFIG=dockerCfg (and a
// HOME of its own, so no user credentials creep in) and returns all it
// printed.
func runClient(dockerCfg, bin string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = append(os.Environ(), "HOME="+dockerCfg, "DOCKER_CONFIG="+dockerCfg, "REGISTRY_AUTH_FILE="+filepath.Join(dockerCfg, "config.json"))
	err := cmd.Run()
	return out.String(), err
}

// clientOK runs a registry client that must succeed and returns its output.
func clientOK(t *testing.T, dockerCfg, bin string, args ...string) string {
	t.Helper()
	out, err := runClient(dockerCfg, bin, args...)
	if err != nil {
		t.Errorf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return out
}

// clientFails runs a registry client that must fail saying each of msgs
// (any one of the alternatives a|b|c), and logs what it said.
func clientFails(t *testing.T, dockerCfg, bin string, msgs []string, args ...string) string {
	t.Helper()
	out, err := runClient(dockerCfg, bin, args...)
	cmdline := filepath.Base(bin) + " " + strings.Join(args, " ")
	if err == nil {
		t.Errorf("%s succeeded, want a failure saying %q:\n%s", cmdline, msgs, out)
		return out
	}
	for _, m := range msgs {
		found := false
		for _, alt := range strings.Split(m, "|") {
			found = found || strings.Contains(out, alt)
		}
		if !found {
			t.Errorf("%s failed without saying %q:\n%s", cmdline, m, out)
		}
	}
	t.Logf("%s (refused, as it must be):\n%s", cmdline, lastLine(out))
	return out
}

// TestAuthRegistryClients: the registry front with a credentials file,
// through crane, skopeo and BuildKit logging in the way they already do
// (the password is the token). ci-main writes the main branch's
// repositories (cache/*); pr-7, a pull request's token, reads them and
// writes only pr/7/*; anonymous clients read public/*. Each client gets a
// 403 DENIED where the token lacks the scope and a 401 without
// credentials or with a wrong token.
func TestAuthRegistryClients(t *testing.T) {
	crane := tool(t, "crane")
	admin := newAuthToken(t, "admin", "--read", "*", "--write", "*")
	ciMain := newAuthToken(t, "ci-main", "--read", "*", "--write", "cache/*")
	pr7 := newAuthToken(t, "pr-7", "--read", "cache/*,pr/7/*", "--write", "pr/7/*")
	file := writeAuthFile(t, "  - {actions: [read], namespaces: [\"public/*\"]}\n", admin, ciMain, pr7)
	s := startAuthServer(t, file)
	h := s.reg

	cfgAdmin := dockerConfig(t, crane, h, admin.token)
	cfgMain := dockerConfig(t, crane, h, ciMain.token)
	cfgPR := dockerConfig(t, crane, h, pr7.token)
	cfgWrong := dockerConfig(t, crane, h, wrongToken())
	cfgNone := dockerConfig(t, crane, h, "")

	dir := t.TempDir()
	layer := filepath.Join(dir, "layer.tar")
	writeTar(t, layer, goSrcTree(t, "net/url"))

	// Set-up, with ci-main: cache/app:v1 (and, by admin, public/app:v1).
	clientOK(t, cfgMain, crane, "append", "--insecure", "-f", layer, "-t", h+"/cache/app:v1")
	if t.Failed() {
		t.Fatalf("ci-main could not push to cache/app; server log:\n%s", s.log.String())
	}
	appDigest := strings.TrimSpace(clientOK(t, cfgMain, crane, "digest", "--insecure", h+"/cache/app:v1"))

	t.Run("crane", func(t *testing.T) {
		// pr-7 may not write main's repositories: a 403 DENIED naming the
		// token and the repository, and nothing written.
		clientFails(t, cfgPR, crane, []string{"DENIED", `token "pr-7" may not write in namespace "cache/app"`},
			"append", "--insecure", "-f", layer, "-t", h+"/cache/app:v2")
		clientFails(t, cfgPR, crane, []string{"DENIED"}, "copy", "--insecure", h+"/cache/app:v1", h+"/cache/app:pr7")
		clientFails(t, cfgPR, crane, []string{"DENIED"}, "tag", "--insecure", h+"/cache/app:v1", "latest")
		if got := clientOK(t, cfgMain, crane, "ls", "--insecure", h+"/cache/app"); got != "v1\n" {
			t.Errorf("tags of cache/app after pr-7's refused pushes: %q, want only v1", got)
		}
		// Without credentials, and with a token the server does not know:
		// 401 (crane's push starts with a HEAD, which has no body; its
		// manifest GET shows the registry's message).
		clientFails(t, cfgNone, crane, []string{"401"}, "append", "--insecure", "-f", layer, "-t", h+"/cache/app:v3")
		clientFails(t, cfgNone, crane, []string{"UNAUTHORIZED", "send a token"}, "manifest", "--insecure", h+"/cache/app:v1")
		// (A wrong token is refused at the token endpoint, which crane
		// asks since the base route challenged it.)
		clientFails(t, cfgWrong, crane, []string{"401|UNAUTHORIZED"}, "append", "--insecure", "-f", layer, "-t", h+"/cache/app:v3")
		clientFails(t, cfgWrong, crane, []string{"UNAUTHORIZED", "unknown token"}, "manifest", "--insecure", h+"/cache/app:v1")
		// The token endpoint (the docker token flow): a bearer token for
		// ci-main, none for a wrong token.
		if out := clientOK(t, cfgMain, crane, "auth", "token", "--insecure", "--push", h+"/cache/app"); !strings.Contains(out, "token") {
			t.Errorf("crane auth token printed no token:\n%s", out)
		}
		clientFails(t, cfgWrong, crane, []string{"401|UNAUTHORIZED|unauthorized"}, "auth", "token", "--insecure", h+"/cache/app")

		// pr-7 reads main's repositories and writes its own: a copy from
		// cache/app to pr/7/app (a cross-repository mount), a pull.
		clientOK(t, cfgPR, crane, "copy", "--insecure", h+"/cache/app:v1", h+"/pr/7/app:v1")
		if got := strings.TrimSpace(clientOK(t, cfgPR, crane, "digest", "--insecure", h+"/pr/7/app:v1")); got != appDigest {
			t.Errorf("pr/7/app:v1 is %q, want the copied %s", got, appDigest)
		}
		clientOK(t, cfgPR, crane, "pull", "--insecure", h+"/cache/app:v1", filepath.Join(dir, "pr7-pulled.tar"))
		clientOK(t, cfgPR, crane, "append", "--insecure", "-f", layer, "-t", h+"/pr/7/other:v1")
		// ... and no other repository, whose owner sees a 403, not a 404.
		clientOK(t, cfgAdmin, crane, "copy", "--insecure", h+"/cache/app:v1", h+"/team/app:v1")
		clientFails(t, cfgPR, crane, []string{"DENIED", `token "pr-7" may not read in namespace "team/app"`}, "manifest", "--insecure", h+"/team/app:v1")
		// ci-main writes cache/*, not public/*.
		clientFails(t, cfgMain, crane, []string{"DENIED"}, "copy", "--insecure", h+"/cache/app:v1", h+"/public/app:v1")

		// Anonymous read of public/*: pulled without credentials; a push
		// there without credentials is challenged.
		clientOK(t, cfgAdmin, crane, "copy", "--insecure", h+"/cache/app:v1", h+"/public/app:v1")
		clientOK(t, cfgNone, crane, "pull", "--insecure", h+"/public/app:v1", filepath.Join(dir, "anon-pulled.tar"))
		if got := strings.TrimSpace(clientOK(t, cfgNone, crane, "digest", "--insecure", h+"/public/app:v1")); got != appDigest {
			t.Errorf("anonymous digest of public/app:v1: %q, want %s", got, appDigest)
		}
		clientFails(t, cfgNone, crane, []string{"401|UNAUTHORIZED"}, "append", "--insecure", "-f", layer, "-t", h+"/public/app:v2")
		// A token's holder may do at least what a client without one may:
		// with one docker config per host, a pull request's job that logs
		// in must still pull the public base images.
		clientOK(t, cfgPR, crane, "manifest", "--insecure", h+"/public/app:v1")
	})

	// The ping: GET /v2/ without credentials must be challenged (401 and
	// a Bearer challenge naming the token endpoint) even though anonymous
	// clients may read public/*. containers/image (skopeo, podman,
	// buildah) and crane's token flow learn from the ping alone whether
	// and how to log in: a 200 there makes them never send the
	// credentials they were given. Anonymous clients then fetch an
	// anonymous token from the token endpoint, as on Docker Hub.
	t.Run("ping", func(t *testing.T) {
		res, err := http.Get("http://" + h + "/v2/")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if c := res.Header.Get("WWW-Authenticate"); res.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(c, "Bearer realm=") {
			t.Errorf("GET /v2/ without credentials: %s, WWW-Authenticate %q; want 401 with a Bearer challenge", res.Status, c)
		}
		// The anonymous token flow: a token granting pull of public/app,
		// and nothing of cache/app (granted scopes are a subset of those
		// asked for, as distribution's token servers do).
		for _, c := range []struct{ repo, want string }{
			{"public/app", "repository:public/app:pull"},
			{"cache/app", ""},
		} {
			res, err := http.Get("http://" + h + "/token?service=" + h + "&scope=repository:" + c.repo + ":pull")
			if err != nil {
				t.Fatal(err)
			}
			var tr struct{ Token, Scope string }
			err = json.NewDecoder(res.Body).Decode(&tr)
			res.Body.Close()
			if err != nil || res.StatusCode != http.StatusOK || tr.Token == "" || tr.Scope != c.want {
				t.Errorf("anonymous /token for %s: %s, %v, scope %q; want 200 and a token granting %q", c.repo, res.Status, err, tr.Scope, c.want)
			}
		}
	})

	t.Run("skopeo", func(t *testing.T) {
		skopeo := tool(t, "skopeo")
		sk := func(args ...string) []string {
			return append([]string{"copy", "--insecure-policy", "--src-tls-verify=false", "--dest-tls-verify=false"}, args...)
		}
		// An OCI layout to copy from, made from the public image (no
		// credentials needed).
		oci := "oci:" + filepath.Join(dir, "layout") + ":v1"
		clientOK(t, cfgNone, skopeo, sk("docker://"+h+"/public/app:v1", oci)...)
		// The credentials on the command line (--src-creds,
		// --dest-creds), with an empty docker config.
		clientOK(t, cfgNone, skopeo, sk("--src-creds", "ci:"+ciMain.token, "docker://"+h+"/cache/app:v1", "oci:"+filepath.Join(dir, "layout2")+":v1")...)
		clientOK(t, cfgNone, skopeo, sk("--dest-creds", "ci:"+ciMain.token, oci, "docker://"+h+"/cache/sk:v1")...)
		clientOK(t, cfgNone, skopeo, sk("--dest-creds", "ci:"+pr7.token, oci, "docker://"+h+"/pr/7/sk:v1")...)
		clientFails(t, cfgNone, skopeo, []string{"denied", `may not write in namespace \"cache/sk\"`},
			sk("--dest-creds", "ci:"+pr7.token, oci, "docker://"+h+"/cache/sk:v2")...)
		clientFails(t, cfgNone, skopeo, []string{"unauthorized", "unknown token"},
			sk("--dest-creds", "ci:"+wrongToken(), oci, "docker://"+h+"/cache/sk:v3")...)
		clientFails(t, cfgNone, skopeo, []string{"unauthorized", "unknown token"},
			sk("--src-creds", "ci:"+wrongToken(), "docker://"+h+"/cache/app:v1", "oci:"+filepath.Join(dir, "layout3")+":v1")...)
		clientFails(t, cfgNone, skopeo, []string{"unauthorized"}, sk(oci, "docker://"+h+"/cache/sk:v4")...)
		// From the docker config crane logged in to.
		clientOK(t, cfgMain, skopeo, "inspect", "--tls-verify=false", "docker://"+h+"/cache/app:v1")
	})

	// The same credentials against a server that gives anonymous clients
	// nothing (its /v2/ challenges every client without credentials).
	t.Run("skopeo without anonymous access", func(t *testing.T) {
		skopeo := tool(t, "skopeo")
		s2 := startAuthServer(t, writeAuthFile(t, "", ciMain, pr7))
		h2 := s2.reg
		sk := func(args ...string) []string {
			return append([]string{"copy", "--insecure-policy", "--src-tls-verify=false", "--dest-tls-verify=false"}, args...)
		}
		layout := filepath.Join(dir, "noanon-layout")
		clientOK(t, cfgMain, crane, "pull", "--insecure", "--format", "oci", h+"/cache/app:v1", layout)
		clientOK(t, cfgNone, skopeo, sk("--dest-creds", "ci:"+ciMain.token, "oci:"+layout, "docker://"+h2+"/cache/app:v1")...)
		clientOK(t, cfgNone, skopeo, sk("--src-creds", "ci:"+pr7.token, "--dest-creds", "ci:"+pr7.token, "docker://"+h2+"/cache/app:v1", "docker://"+h2+"/pr/7/app:v1")...)
		clientFails(t, cfgNone, skopeo, []string{"denied", `may not write in namespace \"cache/sk\"`},
			sk("--src-creds", "ci:"+pr7.token, "--dest-creds", "ci:"+pr7.token, "docker://"+h2+"/cache/app:v1", "docker://"+h2+"/cache/sk:v1")...)
		clientFails(t, cfgNone, skopeo, []string{"unauthorized", "unknown token"},
			sk("--src-creds", "ci:"+wrongToken(), "docker://"+h2+"/cache/app:v1", "dir:"+filepath.Join(dir, "noanon-wrong"))...)
		clientFails(t, cfgNone, skopeo, []string{"unauthorized", "authentication required"},
			sk("docker://"+h2+"/cache/app:v1", "dir:"+filepath.Join(dir, "noanon-none"))...)
	})

	t.Run("buildkit", func(t *testing.T) {
		testAuthBuildKit(t, s, crane, cfgMain, cfgPR, cfgNone)
	})
}

// testAuthBuildKit: main's build exports its cache to cache/app; a pull
// request's build imports it (every step CACHED) and exports its own to
// pr/7/app, but may not export to main's ref.
func testAuthBuildKit(t *testing.T, s *server, crane, cfgMain, cfgPR, cfgNone string) {
	if testing.Short() {
		t.Skip("builds with BuildKit: not with -short")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true but not root: buildkitd needs root")
		}
		t.Skip("buildkitd needs root")
	}
	buildkitd, buildctl := tool(t, "buildkitd"), tool(t, "buildctl")
	tool(t, "runc")
	busybox := "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true but /bin/busybox is missing: scripts/test.sh installs busybox-static")
		}
		t.Skip("no /bin/busybox (Debian's busybox-static)")
	}
	reg := s.reg
	host := startBuildkitd(t, buildkitd, buildctl, reg)

	// The base image, in a repository both tokens read.
	dir := t.TempDir()
	writeBusyboxRootfs(t, busybox, filepath.Join(dir, "rootfs.tar"))
	base := reg + "/cache/base/busybox:1"
	clientOK(t, cfgMain, crane, "append", "--insecure", "--oci-empty-base", "-f", filepath.Join(dir, "rootfs.tar"), "-t", base)
	clientOK(t, cfgMain, crane, "mutate", "--insecure", base, "--set-platform", "linux/amd64",
		"-e", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "--cmd", "/bin/sh", "-t", base)
	if t.Failed() {
		t.FailNow()
	}
	ctxDir := filepath.Join(dir, "ctx")
	if err := os.MkdirAll(ctxDir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(ctxDir, "hello.txt"), "hello from the build context\n")
	// A RUN whose output differs on every run: only a cache hit
	// reproduces it.
	writeFile(t, filepath.Join(ctxDir, "Dockerfile"), "FROM "+base+"\n"+
		"RUN date +%s%N > /stamp && head -c 100000 /dev/urandom > /noise\n"+
		"COPY hello.txt /hello.txt\n"+
		"RUN cat /stamp /hello.txt > /both\n")

	build := func(dockerCfg, image string, cacheFlags ...string) (string, error) {
		args := append([]string{"--addr", host, "build", "--progress=plain", "--frontend", "dockerfile.v0",
			"--local", "context=" + ctxDir, "--local", "dockerfile=" + ctxDir,
			"--output", "type=image,name=" + reg + "/" + image + ",push=true"}, cacheFlags...)
		return runClient(dockerCfg, buildctl, args...)
	}
	mustBuild := func(dockerCfg, image string, cacheFlags ...string) string {
		t.Helper()
		out, err := build(dockerCfg, image, cacheFlags...)
		if err != nil {
			t.Fatalf("buildctl build (%s): %v\n%s\ncairn log:\n%s", image, err, out, s.log.String())
		}
		return out
	}
	prune := func() {
		t.Helper()
		if out, err := runClient(cfgNone, buildctl, "--addr", host, "prune", "--all"); err != nil {
			t.Fatalf("buildctl prune: %v\n%s", err, out)
		}
	}
	allCached := func(what, out string) {
		t.Helper()
		steps, cached := buildSteps(out), cachedSteps(out)
		if len(steps) != 3 {
			t.Fatalf("%s: found %d RUN/COPY steps, want 3:\n%s", what, len(steps), out)
		}
		for id, name := range steps {
			if !cached[id] {
				t.Errorf("%s: step %s was not CACHED", what, name)
			}
		}
		if t.Failed() {
			t.Logf("%s:\n%s", what, out)
		}
	}
	mainRef := reg + "/cache/app:buildcache"
	prRef := reg + "/pr/7/app:buildcache"

	// main's build, with ci-main's credentials.
	mustBuild(cfgMain, "cache/app:main", "--export-cache", "type=registry,ref="+mainRef+",mode=max")
	mainCache := strings.TrimSpace(clientOK(t, cfgMain, crane, "digest", "--insecure", mainRef))

	// The pull request's build, from nothing local: imports main's cache
	// (every step a hit) and exports its own.
	prune()
	out := mustBuild(cfgPR, "pr/7/app:pr", "--import-cache", "type=registry,ref="+mainRef,
		"--export-cache", "type=registry,ref="+prRef+",mode=max")
	allCached("pr-7's build importing main's cache", out)
	clientOK(t, cfgPR, crane, "manifest", "--insecure", prRef)

	// Exporting to main's ref with pr-7's token, or without credentials:
	// refused, and main's cache is what main wrote.
	out, err := build(cfgPR, "pr/7/app:pr2", "--import-cache", "type=registry,ref="+mainRef,
		"--export-cache", "type=registry,ref="+mainRef+",mode=max")
	if err == nil || !regexp.MustCompile(`(?i)403 Forbidden|denied`).MatchString(out) {
		t.Errorf("pr-7's build exporting to %s: %v, want a failure saying denied or 403:\n%s", mainRef, err, out)
	} else {
		t.Logf("pr-7 exporting to main's cache (refused, as it must be):\n%s", lastLine(out))
	}
	// Without credentials (a build of scratch, which needs no base
	// image, written to a local OCI tar: only the cache export needs the
	// registry).
	scratchDir := filepath.Join(dir, "scratch")
	if err := os.MkdirAll(scratchDir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(scratchDir, "hello.txt"), "hello\n")
	writeFile(t, filepath.Join(scratchDir, "Dockerfile"), "FROM scratch\nCOPY hello.txt /hello.txt\n")
	out, err = runClient(cfgNone, buildctl, "--addr", host, "build", "--progress=plain", "--frontend", "dockerfile.v0",
		"--local", "context="+scratchDir, "--local", "dockerfile="+scratchDir,
		"--output", "type=oci,dest="+filepath.Join(dir, "scratch.tar"),
		"--export-cache", "type=registry,ref="+mainRef+",mode=max")
	if err == nil || !regexp.MustCompile(`(?i)401 Unauthorized|unauthorized`).MatchString(out) {
		t.Errorf("a build without credentials exporting to %s: %v, want a failure saying 401 or unauthorized:\n%s", mainRef, err, out)
	} else {
		t.Logf("exporting without credentials (refused, as it must be):\n%s", lastLine(out))
	}
	if got := strings.TrimSpace(clientOK(t, cfgMain, crane, "digest", "--insecure", mainRef)); got != mainCache {
		t.Errorf("main's cache %s changed from %s to %s after refused exports", mainRef, mainCache, got)
	}

	// main's build, from nothing local, still hits its own cache.
	prune()
	out = mustBuild(cfgMain, "cache/app:main2", "--import-cache", "type=registry,ref="+mainRef)
	allCached("main's second build", out)
}

// TestAuthPoisoning: a pull request's token cannot make a lookup in main
// hit a layer it pushed, through the gRPC front and the CLI; a step
// record in a namespace never changes once written, also under
// concurrent writes; the CLI says what to do without a token and never
// sends one in clear text across the network.
func TestAuthPoisoning(t *testing.T) {
	mainWriter := newAuthToken(t, "main-writer", "--read", "main", "--write", "main")
	pr7 := newAuthToken(t, "pr-7", "--read", "main,pr/7", "--write", "pr/7")
	s := startAuthServer(t, writeAuthFile(t, "", mainWriter, pr7))
	dir := t.TempDir()
	pushLayer := func(tok authToken, name string) string {
		t.Helper()
		path := filepath.Join(dir, name+".tar")
		writeTar(t, path, map[string][]byte{name + ".txt": []byte("the layer " + name + " made by " + tok.name + "\n")})
		r := authCLI(s, tok.token, "push", path, "--json")
		var p pushJSON
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &p) != nil || p.Digest == "" {
			t.Fatalf("push with %s's token: %v", tok.name, r)
		}
		return p.Digest.String()
	}
	step := []string{"--instruction", "RUN make release", "--platform", "linux/amd64"}
	record := func(tok authToken, ns, layer string) result {
		t.Helper()
		return authCLI(s, tok.token, append([]string{"record", "--namespace", ns, "--layer", layer}, step...)...)
	}
	lookup := func(tok authToken, namespaces string) result {
		t.Helper()
		return authCLI(s, tok.token, append([]string{"lookup", "--namespaces", namespaces, "--json"}, step...)...)
	}
	type lookupJSON struct {
		Hit   bool   `json:"hit"`
		Key   string `json:"key"`
		Layer *struct {
			Digest string `json:"digest"`
		} `json:"layer"`
		Namespace   string `json:"namespace"`
		Divergences int    `json:"divergences"`
	}
	hit := func(r result) lookupJSON {
		t.Helper()
		var l lookupJSON
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &l) != nil || !l.Hit || l.Layer == nil {
			t.Fatalf("want a hit: %v", r)
		}
		return l
	}

	// The pull request builds: pushes its layer, records the step in its
	// own namespace.
	evil := pushLayer(pr7, "pr7")
	if r := record(pr7, "pr/7", evil); r.code != 0 {
		t.Fatalf("pr-7 recording in pr/7: %v", r)
	}
	// It may not record in main: exit 1, permission denied, naming the
	// token and the namespace.
	wantCLI(t, record(pr7, "main", evil), exitFailure, "permission denied", `token "pr-7" may not write in namespace "main"`)
	// main misses; the pull request's own lookup (its namespace, then
	// main's) hits its record.
	wantCLI(t, lookup(mainWriter, "main"), exitMiss, "miss")
	if l := hit(lookup(pr7, "pr/7,main")); l.Layer.Digest != evil || l.Namespace != "pr/7" {
		t.Errorf("pr-7's lookup in pr/7,main: %+v, want its layer %s from pr/7", l, evil)
	}
	// main-writer may not read pr/7 at all: a denial, not a silent miss.
	wantCLI(t, lookup(mainWriter, "pr/7,main"), exitFailure, "permission denied", `"pr/7"`)

	// main builds the same step: another layer, recorded in main.
	good := pushLayer(mainWriter, "main")
	if r := record(mainWriter, "main", good); r.code != 0 {
		t.Fatalf("main-writer recording in main: %v", r)
	}
	// The pull request tries to replace it: denied, before any
	// divergence is counted.
	wantCLI(t, record(pr7, "main", evil), exitFailure, "permission denied")
	// main-writer recording the same step with the same layer again gets
	// the record back; with another layer: refused as a divergence.
	if r := record(mainWriter, "main", good); r.code != 0 {
		t.Errorf("recording the same step with the same layer again: %v", r)
	}
	divergences := s.metric("cairn_step_divergences_total")
	other := pushLayer(mainWriter, "other")
	wantCLI(t, record(mainWriter, "main", other), exitFailure, "step diverged")
	// main-writer recording pr-7's layer (which it cannot tell from any
	// other): also a divergence.
	wantCLI(t, record(mainWriter, "main", evil), exitFailure, "step diverged")
	for _, who := range []authToken{mainWriter, pr7} {
		l := hit(lookup(who, "main"))
		if l.Layer.Digest != good || l.Namespace != "main" || l.Divergences != 2 {
			t.Errorf("%s's lookup in main: %+v, want main-writer's layer %s with 2 divergences", who.name, l, good)
		}
	}
	if r := authCLI(s, mainWriter.token, append([]string{"lookup", "--namespaces", "main"}, step...)...); r.code != 0 || !strings.Contains(r.stdout, "divergences") {
		t.Errorf("the text lookup does not show the divergences: %v", r)
	}
	if got := s.metric("cairn_step_divergences_total"); got != divergences+2 {
		t.Errorf("cairn_step_divergences_total: %v, want %v", got, divergences+2)
	}
	// pr-7's own record is untouched.
	if l := hit(lookup(pr7, "pr/7")); l.Layer.Digest != evil {
		t.Errorf("pr-7's record in pr/7: %+v", l)
	}

	// The audit log names who wrote or tried to write where.
	log := s.log.String()
	for _, want := range []string{
		`msg=audit who=pr-7 anonymous=false action=write what="record step ` + "sha256:",
		`namespace=pr/7 code=OK`,
		`msg=audit who=main-writer anonymous=false action=write what="record step sha256:`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("no audit line saying %s", want)
		}
	}
	if !regexp.MustCompile(`msg=audit who=pr-7 .*namespace=main .*code=PermissionDenied`).MatchString(log) {
		t.Errorf("no audit line for pr-7's refused record in main (a denied write attempt is the one worth auditing)")
	}
	if !regexp.MustCompile(`msg=audit who=main-writer .*what="record step sha256:[0-9a-f]{64}" namespace=main code=FailedPrecondition`).MatchString(log) {
		t.Errorf("the audit line of a diverged record does not name the step")
	}

	// Immutable under concurrent writes: 6 records of a new step in main,
	// each with another layer, at once: one wins, 5 diverge, and the
	// record is the winner's.
	race := []string{"--instruction", "RUN make race", "--platform", "linux/amd64"}
	var raced []string
	for i := range 6 {
		raced = append(raced, pushLayer(mainWriter, fmt.Sprintf("race%d", i)))
	}
	results := make([]result, len(raced))
	var wg sync.WaitGroup
	for i, l := range raced {
		wg.Go(func() {
			results[i] = authCLI(s, mainWriter.token, append([]string{"record", "--namespace", "main", "--layer", l, "--json"}, race...)...)
		})
	}
	wg.Wait()
	winner := ""
	for i, r := range results {
		switch {
		case r.code == 0 && winner == "":
			winner = raced[i]
		case r.code == 0:
			t.Errorf("two concurrent records of one step with different layers both succeeded: %s and %s", winner, raced[i])
		case r.code != exitFailure || !strings.Contains(r.stderr, "step diverged"):
			t.Errorf("a concurrent record that lost: %v, want exit 1 saying step diverged", r)
		}
	}
	if winner == "" {
		t.Fatalf("no concurrent record won: %v", results)
	}
	r := authCLI(s, pr7.token, append([]string{"lookup", "--namespaces", "pr/7,main", "--json"}, race...)...)
	if l := hit(r); l.Layer.Digest != winner || l.Namespace != "main" || l.Divergences != 5 {
		t.Errorf("after the race: %+v, want the winner %s with 5 divergences", l, winner)
	}

	// The CLI without a token: exit 1 saying to pass CAIRN_TOKEN; with a
	// wrong one: exit 1 saying the server does not know it.
	wantCLI(t, authCLI(s, "", append([]string{"lookup", "--namespaces", "main"}, step...)...), exitFailure, "unauthenticated", "CAIRN_TOKEN")
	wantCLI(t, authCLI(s, "", "push", filepath.Join(dir, "main.tar")), exitFailure, "CAIRN_TOKEN")
	wantCLI(t, authCLI(s, wrongToken(), append([]string{"lookup", "--namespaces", "main"}, step...)...), exitFailure, "unknown token", "--auth-file")
	// --token-file and --token work as CAIRN_TOKEN does.
	tokenFile := filepath.Join(dir, "main.token")
	writeFile(t, tokenFile, mainWriter.token+"\n")
	if r := authCLI(s, "", append([]string{"lookup", "--namespaces", "main", "--token-file", tokenFile}, step...)...); r.code != 0 {
		t.Errorf("lookup with --token-file: %v", r)
	}
	if r := authCLI(s, "", append([]string{"lookup", "--namespaces", "main", "--token", mainWriter.token}, step...)...); r.code != 0 {
		t.Errorf("lookup with --token: %v", r)
	}

	// A token for a server across the network without TLS: refused before
	// any connection (192.0.2.1 is TEST-NET-1: nothing answers there, so a
	// dial would time out instead of failing fast with this message).
	for _, args := range [][]string{
		append([]string{"lookup", "--namespaces", "main"}, step...),
		{"push", filepath.Join(dir, "main.tar")},
	} {
		start := time.Now()
		r := authCLI(s, mainWriter.token, append(args, "--server", "192.0.2.1:7070", "--timeout", "2s")...)
		wantCLI(t, r, exitFailure, "clear text", "--tls")
		if d := time.Since(start); d > 1500*time.Millisecond || strings.Contains(r.stderr, "deadline") || strings.Contains(r.stderr, "timed out") {
			t.Errorf("the refusal came after a connection attempt (%v): %v", d, r)
		}
	}
}
