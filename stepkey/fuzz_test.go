package stepkey

import (
	"errors"
	"strings"
	"testing"
	"unicode"

	"github.com/opencontainers/go-digest"
)

var fuzzSeeds = []string{
	"run  apt-get update",
	"RUN a \\\n    b",
	"RUN a \\\n# c\n\n b",
	`RUN echo "a  b"   'c  d'  $'e\'  f'`,
	`RUN echo ${A#a  b}   ${B:-"x"}   "$(echo "x  y")"`,
	"RUN a   `b  c`   d",
	"RUN a\u00a0  b",
	`CMD [ "a" , "b" ]`,
	`CMD ["a", 1]`,
	`RUN [ -f x ]  &&  y`,
	`SHELL [ "/bin/bash", "-c" ]`,
	`COPY --from=b --chown=1:1  a  b`,
	`RUN --mount=type=cache,target=/b --network=none --mount=a x`,
	`ENV A   x   y`,
	`env A=1    B="x  y"`,
	`WORKDIR /a  b`,
	`from --platform=$BUILDPLATFORM  golang  as  build`,
	`healthcheck --timeout=3s cmd [ "curl", "x" ]`,
	`onbuild  run  make   all`,
	"RUN <<EOF\n  echo  a\n\nEOF\n",
	"RUN   cat <<EOF  >  /x \\\n  && y\nbody  \\\nEOF",
	`RUN echo a\`,
	"RUN \t\r\n",
	`ENV 'a   b' c=1`,
	`RUN echo "a\"  b"   "${A:-"q"}  x"  ${B:-${C}}   $'d  e`,
}

// FuzzNormalize checks that Normalize never panics, is idempotent, returns
// trimmed text or an ErrInvalidStep, and that Key is deterministic and
// equal for an instruction and its normal form.
func FuzzNormalize(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		// Random text rarely starts with a keyword: try it behind a few.
		for _, prefix := range []string{"", "RUN ", "ENV ", "COPY --a=b ", "HEALTHCHECK CMD ", "FROM ", "ONBUILD LABEL "} {
			checkNormalize(t, prefix+in)
		}
	})
}

func checkNormalize(t *testing.T, in string) {
	t.Helper()
	n, err := Normalize(in)
	if err != nil {
		if !errors.Is(err, ErrInvalidStep) {
			t.Fatalf("Normalize(%q): %v does not wrap ErrInvalidStep", in, err)
		}
		return
	}
	if n != strings.TrimFunc(n, unicode.IsSpace) {
		t.Fatalf("Normalize(%q) = %q: not trimmed", in, n)
	}
	n2, err := Normalize(n)
	if err != nil {
		t.Fatalf("Normalize(%q) = %q, which fails to normalize: %v", in, n, err)
	}
	if n2 != n {
		t.Fatalf("not idempotent:\n   in %q\n once %q\ntwice %q", in, n, n2)
	}
	s := Step{Instruction: in, InputsDigest: digest.FromString(in), Platform: "linux/amd64", BuildArgs: []string{"A=" + in}}
	k1, err := Key(l1, s)
	if err != nil {
		t.Fatalf("Key(%q): %v", in, err)
	}
	k2, _ := Key(l1, s)
	s.Instruction = n
	k3, _ := Key(l1, s)
	if k1 != k2 || k1 != k3 {
		t.Fatalf("keys of %q differ: %s, %s; normalized: %s", in, k1, k2, k3)
	}
}

// FuzzStep checks Step.Normalized on arbitrary build args and platforms:
// no panic, idempotent, and the key ignores build arg order.
func FuzzStep(f *testing.F) {
	f.Add("linux/amd64", "A=1\nB=2\nA=1")
	f.Add("Linux/ARM/v7", "=x")
	f.Add("", "A=b=c\nZ=")
	f.Add("linux", "A")
	f.Fuzz(func(t *testing.T, platform, args string) {
		s := Step{Instruction: "RUN x", Platform: platform, BuildArgs: strings.Split(args, "\n")}
		n, err := s.Normalized()
		if err != nil {
			if !errors.Is(err, ErrInvalidStep) {
				t.Fatalf("%+v: %v does not wrap ErrInvalidStep", s, err)
			}
			return
		}
		n2, err := n.Normalized()
		if err != nil || n2.Platform != n.Platform || strings.Join(n2.BuildArgs, "\n") != strings.Join(n.BuildArgs, "\n") {
			t.Fatalf("not idempotent: %+v -> %+v, %v", n, n2, err)
		}
		rev := Step{Instruction: s.Instruction, Platform: platform}
		for i := len(s.BuildArgs) - 1; i >= 0; i-- {
			rev.BuildArgs = append(rev.BuildArgs, s.BuildArgs[i])
		}
		k1, _ := Key("", s)
		k2, err := Key("", rev)
		if err != nil || k1 != k2 {
			t.Fatalf("build arg order changes the key: %s, %s, %v", k1, k2, err)
		}
	})
}

// The hand check of digests accepts exactly what go-digest's Validate
// accepts, and NormalizedKey of a normalized step is Key of the step.
func FuzzDigestCheck(f *testing.F) {
	f.Add("sha256:" + strings.Repeat("ab", 32))
	f.Add("sha512:" + strings.Repeat("0", 128))
	f.Add("sha384:" + strings.Repeat("f", 95) + "G")
	f.Add("sha256:" + strings.Repeat("A", 64))
	f.Add("md5:d41d8cd98f00b204e9800998ecf8427e")
	f.Fuzz(func(t *testing.T, s string) {
		got := validDigest("parent", digest.Digest(s)) == nil
		want := s == "" || digest.Digest(s).Validate() == nil
		if got != want {
			t.Fatalf("validDigest(%q) accepts: %v; go-digest: %v", s, got, want)
		}
		if isHexDigest(s) && digest.Digest(s).Validate() != nil {
			t.Fatalf("isHexDigest(%q) but go-digest refuses it", s)
		}
		step := Step{Instruction: "run  echo   " + s, BuildArgs: []string{"B=2", "A=1"}}
		n, err := step.Normalized()
		if err != nil {
			return
		}
		k1, err1 := Key(digest.Digest(s), step)
		k2, err2 := NormalizedKey(digest.Digest(s), n)
		if k1 != k2 || (err1 == nil) != (err2 == nil) {
			t.Fatalf("Key %s, %v; NormalizedKey %s, %v", k1, err1, k2, err2)
		}
	})
}
