package stepkey

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// Digests used across the tests: sha256 of "layer1", "layer2", "layer3" and
// "context".
const (
	l1  digest.Digest = "sha256:77ea7eee3d80b1a38f83906dd3048e2689457eb90e18a7d12f839c5ae37106a2"
	l2  digest.Digest = "sha256:95cf1a2e1698fe3ca1fcc3f653119146b271d0b62e487ec264441e886a11bd06"
	l3  digest.Digest = "sha256:a0e70458d19e37e14d6388030a017c587283e2fb6ef10c0744cad0294c47e8f8"
	ctx digest.Digest = "sha256:ea7792a26f405e2ae9c6f49ca93bbe6076ceac0a1fc53d83426c7d7f2d9377e4"
)

// TestKeyGolden pins the key format. The wants were computed outside Go
// (Python hashlib over the encoding described in the package doc). If this
// test fails, keys stored by earlier versions no longer match: bump Version
// and update the vectors on purpose, never just the vectors.
func TestKeyGolden(t *testing.T) {
	tests := []struct {
		why    string
		parent digest.Digest
		step   Step
		want   digest.Digest
	}{
		{
			"RUN on scratch",
			"", Step{Instruction: "run  apt-get update"},
			"sha256:490ed26a1fb0c80a3f530ec259051d8631be5d2c7bae9c3fa565bec836073315",
		},
		{
			"COPY with flags, inputs and platform",
			l1, Step{Instruction: "COPY --from=x --chown=1:1 a b", InputsDigest: ctx, Platform: "Linux/ARM64/v8"},
			"sha256:cff331bc944893ab4eb0d81bb93bce776f2ba5097dddda6d10bf5ff85740dc9e",
		},
		{
			"ENV with build args on a chain",
			"sha256:9c7a0b8937394482a0afcc4bef0ca0aba0d74084bd9f60198ec7fac434e5436d",
			Step{Instruction: "ENV A=1   B=2", Platform: "linux/amd64", BuildArgs: []string{"B=x=y", "A=1", "A=1"}},
			"sha256:7f586b5e72e8f2c05338a5d6ed389c2b33c9d72a12f5e3f2afea2e4c4e989d9f",
		},
	}
	for _, tt := range tests {
		got, err := Key(tt.parent, tt.step)
		if err != nil {
			t.Errorf("%s: Key: %v", tt.why, err)
			continue
		}
		if got != tt.want {
			t.Errorf("%s: Key = %s, want %s", tt.why, got, tt.want)
		}
	}
}

func TestChainID(t *testing.T) {
	// chain(L1) = L1; chain(L1, L2) = sha256("L1 L2"); wants from sha256sum.
	c12 := digest.Digest("sha256:9c7a0b8937394482a0afcc4bef0ca0aba0d74084bd9f60198ec7fac434e5436d")
	c123 := digest.Digest("sha256:1512378f2edc09c9e21c7511cc1aaf7c6d42d3b6ff301027b8527b8b23c3ce70")
	if got := ChainID("", l1); got != l1 {
		t.Errorf("ChainID(scratch, l1) = %s, want %s", got, l1)
	}
	if got := ChainID(l1, l2); got != c12 {
		t.Errorf("ChainID(l1, l2) = %s, want %s", got, c12)
	}
	if got := ChainID(ChainID(ChainID("", l1), l2), l3); got != c123 {
		t.Errorf("chain of l1, l2, l3 = %s, want %s", got, c123)
	}
}

func TestNext(t *testing.T) {
	k, err := Key(l1, Step{Instruction: "ENV A=1"})
	if err != nil {
		t.Fatal(err)
	}
	// Golden, computed outside Go like TestKeyGolden's.
	const want digest.Digest = "sha256:2f619b4dad7d6baac89853c584dcc64f6a459fca2c4e36cb6df9869b0a7017b1"
	if got := Next(l1, k, ""); got != want {
		t.Errorf("Next(l1, key, no layer) = %s, want %s", got, want)
	}
	if got := Next(l1, k, l2); got != ChainID(l1, l2) {
		t.Errorf("Next(l1, key, l2) = %s, want the chain ID %s", got, ChainID(l1, l2))
	}
	if got := Next("", k, l2); got != l2 {
		t.Errorf("Next(scratch, key, l2) = %s, want l2", got)
	}
	k2, err := Key(l1, Step{Instruction: "ENV A=2"})
	if err != nil {
		t.Fatal(err)
	}
	if Next(l1, k, "") == Next(l1, k2, "") {
		t.Error("two different metadata steps give the same next parent")
	}
	if Next(l1, k, "") == Next(l2, k, "") {
		t.Error("one metadata step on two parents gives the same next parent")
	}
	if Next(l1, k, "") == k {
		t.Error("next parent equals the step key")
	}
}

// TestKeyFieldsDoNotBleed moves bytes from one field to its neighbour: an
// encoding by plain concatenation would give equal keys.
func TestKeyFieldsDoNotBleed(t *testing.T) {
	base := Step{Instruction: "RUN x", Platform: "linux/amd64", BuildArgs: []string{"A=1"}}
	key := func(parent digest.Digest, s Step) digest.Digest {
		t.Helper()
		k, err := Key(parent, s)
		if err != nil {
			t.Fatalf("Key(%s, %+v): %v", parent, s, err)
		}
		return k
	}
	tests := []struct {
		why  string
		a, b Step
	}{
		{"build arg split differently", Step{Instruction: "RUN x", BuildArgs: []string{"A=1B=2"}}, Step{Instruction: "RUN x", BuildArgs: []string{"A=1", "B=2"}}},
		{"arg value vs next arg", Step{Instruction: "RUN x", BuildArgs: []string{"A=1", "B=2"}}, Step{Instruction: "RUN x", BuildArgs: []string{"A=1\x00\x00\x00\x00\x00\x00\x00\x03B=2"}}},
		{"platform vs args", Step{Instruction: "RUN x", Platform: "linux/amd64"}, Step{Instruction: "RUN x", BuildArgs: []string{"linux/amd64=x"}}},
		{"no args vs one empty-valued arg", Step{Instruction: "RUN x"}, Step{Instruction: "RUN x", BuildArgs: []string{"A="}}},
		{"instruction vs inputs", Step{Instruction: "RUN x", InputsDigest: ctx}, Step{Instruction: "RUN x" + string(ctx)}},
	}
	for _, tt := range tests {
		if key("", tt.a) == key("", tt.b) {
			t.Errorf("%s: %+v and %+v share a key", tt.why, tt.a, tt.b)
		}
	}
	// The parent and the instruction: "RUN x" on l1 vs parent text moved.
	if key(l1, base) == key("", Step{Instruction: "RUN " + string(l1) + "x", Platform: base.Platform, BuildArgs: base.BuildArgs}) {
		t.Error("parent bytes moved into the instruction give the same key")
	}
	// Every field matters.
	variants := []struct {
		why    string
		parent digest.Digest
		step   Step
	}{
		{"base", "", base},
		{"parent", l1, base},
		{"instruction", "", Step{Instruction: "RUN y", Platform: base.Platform, BuildArgs: base.BuildArgs}},
		{"inputs", "", Step{Instruction: "RUN x", InputsDigest: ctx, Platform: base.Platform, BuildArgs: base.BuildArgs}},
		{"platform", "", Step{Instruction: "RUN x", Platform: "linux/arm64", BuildArgs: base.BuildArgs}},
		{"no platform", "", Step{Instruction: "RUN x", BuildArgs: base.BuildArgs}},
		{"build arg value", "", Step{Instruction: "RUN x", Platform: base.Platform, BuildArgs: []string{"A=2"}}},
		{"no build args", "", Step{Instruction: "RUN x", Platform: base.Platform}},
	}
	seen := map[digest.Digest]string{}
	for _, v := range variants {
		k := key(v.parent, v.step)
		if prev, dup := seen[k]; dup {
			t.Errorf("%s and %s share key %s", prev, v.why, k)
		}
		seen[k] = v.why
	}
}

func TestKeyEquivalences(t *testing.T) {
	tests := []struct {
		why       string
		a, b      Step
		wantEqual bool
	}{
		{"instruction normalized", Step{Instruction: "run  x"}, Step{Instruction: "RUN x"}, true},
		{"build arg order", Step{Instruction: "RUN x", BuildArgs: []string{"A=1", "B=2"}}, Step{Instruction: "RUN x", BuildArgs: []string{"B=2", "A=1"}}, true},
		{"build arg duplicate", Step{Instruction: "RUN x", BuildArgs: []string{"A=1", "A=1"}}, Step{Instruction: "RUN x", BuildArgs: []string{"A=1"}}, true},
		{"build arg nil vs empty", Step{Instruction: "RUN x", BuildArgs: []string{}}, Step{Instruction: "RUN x"}, true},
		{"build arg value", Step{Instruction: "RUN x", BuildArgs: []string{"A=1"}}, Step{Instruction: "RUN x", BuildArgs: []string{"A=2"}}, false},
		{"build arg empty value vs absent", Step{Instruction: "RUN x", BuildArgs: []string{"A="}}, Step{Instruction: "RUN x"}, false},
		{"build arg key case", Step{Instruction: "RUN x", BuildArgs: []string{"A=1"}}, Step{Instruction: "RUN x", BuildArgs: []string{"a=1"}}, false},
		{"platform case", Step{Instruction: "RUN x", Platform: "Linux/AMD64"}, Step{Instruction: "RUN x", Platform: "linux/amd64"}, true},
		{"platform variant", Step{Instruction: "RUN x", Platform: "linux/arm64"}, Step{Instruction: "RUN x", Platform: "linux/arm64/v8"}, false},
		{"platform alias not mapped", Step{Instruction: "RUN x", Platform: "linux/x86_64"}, Step{Instruction: "RUN x", Platform: "linux/amd64"}, false},
		{"inputs digest", Step{Instruction: "COPY a b", InputsDigest: l1}, Step{Instruction: "COPY a b", InputsDigest: l2}, false},
	}
	for _, tt := range tests {
		ka, err := Key(l1, tt.a)
		if err != nil {
			t.Errorf("%s: Key(%+v): %v", tt.why, tt.a, err)
			continue
		}
		kb, err := Key(l1, tt.b)
		if err != nil {
			t.Errorf("%s: Key(%+v): %v", tt.why, tt.b, err)
			continue
		}
		if (ka == kb) != tt.wantEqual {
			t.Errorf("%s: keys equal = %v, want %v", tt.why, ka == kb, tt.wantEqual)
		}
	}
}

func TestKeyErrors(t *testing.T) {
	sha512 := digest.Digest("sha512:" + strings.Repeat("ab", 64))
	tests := []struct {
		why    string
		parent digest.Digest
		step   Step
	}{
		{"unknown parent algorithm", "md5:d41d8cd98f00b204e9800998ecf8427e", Step{Instruction: "RUN x"}},
		{"parent bad hex", digest.Digest("sha256:" + strings.Repeat("g", 64)), Step{Instruction: "RUN x"}},
		{"parent upper-case hex", digest.Digest("sha256:" + strings.ToUpper(string(l1[7:]))), Step{Instruction: "RUN x"}},
		{"parent short", "sha256:abc", Step{Instruction: "RUN x"}},
		{"parent without algorithm", digest.Digest(l1[7:]), Step{Instruction: "RUN x"}},
		{"inputs unknown algorithm", "", Step{Instruction: "COPY a b", InputsDigest: "blake3:" + digest.Digest(strings.Repeat("a", 64))}},
		{"inputs bad hex", "", Step{Instruction: "COPY a b", InputsDigest: "sha256:xyz"}},
		{"sha512 with a sha256 length", "", Step{Instruction: "COPY a b", InputsDigest: "sha512:" + l1[7:]}},
		{"COPY without inputs", "", Step{Instruction: "COPY a b"}},
		{"ADD without inputs", "", Step{Instruction: "add  https://x/y /z"}},
		{"bad instruction", "", Step{Instruction: "BOGUS x"}},
		{"build arg without =", "", Step{Instruction: "RUN x", BuildArgs: []string{"A"}}},
		{"build arg empty key", "", Step{Instruction: "RUN x", BuildArgs: []string{"=1"}}},
		{"build arg key with blank", "", Step{Instruction: "RUN x", BuildArgs: []string{"A B=1"}}},
		{"build arg twice, two values", "", Step{Instruction: "RUN x", BuildArgs: []string{"A=1", "B=2", "A=2"}}},
		{"platform one part", "", Step{Instruction: "RUN x", Platform: "linux"}},
		{"platform four parts", "", Step{Instruction: "RUN x", Platform: "linux/arm/v7/x"}},
		{"platform empty part", "", Step{Instruction: "RUN x", Platform: "linux//v7"}},
		{"platform blank", "", Step{Instruction: "RUN x", Platform: "linux/amd 64"}},
		{"valid sha512 parent, bad step", sha512, Step{}},
	}
	for _, tt := range tests {
		k, err := Key(tt.parent, tt.step)
		if err == nil {
			t.Errorf("%s: Key = %s, want an error", tt.why, k)
			continue
		}
		if !errors.Is(err, ErrInvalidStep) {
			t.Errorf("%s: %v does not wrap ErrInvalidStep", tt.why, err)
		}
	}
	// The accepted side of the same rules.
	ok := []struct {
		why    string
		parent digest.Digest
		step   Step
	}{
		{"sha512 parent and inputs", sha512, Step{Instruction: "COPY a b", InputsDigest: sha512}},
		{"RUN with inputs (bind mount)", l1, Step{Instruction: "RUN --mount=type=bind,target=/src make", InputsDigest: ctx}},
		{"ONBUILD COPY needs no inputs yet", l1, Step{Instruction: "ONBUILD COPY . /src"}},
		{"build arg value with = and blanks", "", Step{Instruction: "RUN x", BuildArgs: []string{"A=b = c"}}},
	}
	for _, tt := range ok {
		if _, err := Key(tt.parent, tt.step); err != nil {
			t.Errorf("%s: %v", tt.why, err)
		}
	}
}

func TestNormalized(t *testing.T) {
	in := Step{
		Instruction:  "copy --from=b  --chown=1  a   b",
		InputsDigest: ctx,
		Platform:     "LINUX/ARM/V7",
		BuildArgs:    []string{"Z=1", "A=2", "Z=1", "A_B=3"},
	}
	got, err := in.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	want := Step{
		Instruction:  "COPY --chown=1 --from=b a b",
		InputsDigest: ctx,
		Platform:     "linux/arm/v7",
		BuildArgs:    []string{"A=2", "A_B=3", "Z=1"},
	}
	if got.Instruction != want.Instruction || got.InputsDigest != want.InputsDigest || got.Platform != want.Platform || !slices.Equal(got.BuildArgs, want.BuildArgs) {
		t.Errorf("Normalized:\n got %+v\nwant %+v", got, want)
	}
	again, err := got.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	if again.Instruction != got.Instruction || again.Platform != got.Platform || !slices.Equal(again.BuildArgs, got.BuildArgs) {
		t.Errorf("Normalized is not idempotent: %+v -> %+v", got, again)
	}
	if in.BuildArgs[0] != "Z=1" {
		t.Errorf("Normalized changed the caller's build args: %v", in.BuildArgs)
	}
	k1, _ := Key(l1, in)
	k2, _ := Key(l1, got)
	if k1 != k2 {
		t.Errorf("a step and its normalized form have different keys: %s, %s", k1, k2)
	}
}
