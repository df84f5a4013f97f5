package stepkey

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalize(t *testing.T) {
	tests := []struct {
		in, want, why string
	}{
		{"run  apt-get update", "RUN apt-get update", "keyword upper-cased, blanks collapsed"},
		{"  RUN\tmake \t all  \n", "RUN make all", "trimmed; tabs are blanks"},
		{"RUN a \\\n    b", "RUN a b", "line continuation joined"},
		{"RUN a \\  \r\n  b", "RUN a b", "CRLF and blanks after the backslash"},
		{"RUN a \\\n# comment\n\n  b", "RUN a b", "comment and blank lines inside a continuation dropped"},
		{`RUN echo "a  b"   'c  d'`, `RUN echo "a  b" 'c  d'`, "quoted blanks kept"},
		{`RUN echo a\  b`, `RUN echo a\  b`, "an escaped blank is part of the word"},
		{`RUN echo $'a\'  b'   c`, `RUN echo $'a\'  b' c`, "ANSI-C quote with an escaped quote"},
		{`RUN echo ${A:-x}   ${B}`, `RUN echo ${A:-x} ${B}`, "simple ${} is a word"},
		{`RUN echo ${A#a  b}  x`, `RUN echo ${A#a  b} x`, "blanks inside ${} count (patterns): kept"},
		{`RUN a   $(b  c)   d`, `RUN a $(b  c)   d`, "command substitution: kept as written from there"},
		{"RUN a   `b  c`   d", "RUN a `b  c`   d", "backticks: kept as written from there"},
		{`RUN echo "$(echo "x  y")"   z`, `RUN echo "$(echo "x  y")"   z`, "nested quotes in $(): kept"},
		{`RUN echo 'a  b`, `RUN echo 'a  b`, "unterminated quote: kept"},
		{`RUN echo "a  b`, `RUN echo "a  b`, "unterminated double quote: kept"},
		{`RUN echo $'a  b`, `RUN echo $'a  b`, "unterminated ANSI-C quote: kept"},
		{`RUN echo "a\"  b"   c`, `RUN echo "a\"  b" c`, "escaped quote inside double quotes"},
		{`RUN echo "it's  x"   y`, `RUN echo "it's  x" y`, "a single quote inside double quotes is a letter"},
		{`RUN echo "${A}  x"   y`, `RUN echo "${A}  x" y`, "simple ${} inside double quotes"},
		{`RUN echo "${A:-"q"}  x"   y`, `RUN echo "${A:-"q"}  x"   y`, "quotes inside a quoted ${}: kept from there"},
		{`RUN echo ${A:-${B}}   c`, `RUN echo ${A:-${B}} c`, "nested ${}"},
		{`RUN echo ${A   b`, `RUN echo ${A   b`, "unterminated ${: kept"},
		{`RUN echo ${A:-'x'}   b`, `RUN echo ${A:-'x'}   b`, "quotes inside ${}: kept from there"},
		{"RUN a\u00a0  b", "RUN a\u00a0  b", "NBSP: arguments kept as written"},
		{`CMD [ "a" , "b" ]`, `CMD ["a","b"]`, "JSON re-encoded compactly"},
		{`cmd ["<&>", "\u00e9"]`, `CMD ["<&>","é"]`, "no HTML escaping, UTF-8 as is"},
		{`RUN [ -f x ]  &&  y`, `RUN [ -f x ] && y`, "invalid JSON is shell form"},
		{`CMD ["a"] b`, `CMD ["a"] b`, "trailing text: not JSON, shell form"},
		{`CMD []`, `CMD []`, "empty exec form"},
		{`SHELL [ "/bin/bash", "-c" ]`, `SHELL ["/bin/bash","-c"]`, "SHELL exec form"},
		{`COPY --from=b --chown=1:1  a  b`, `COPY --chown=1:1 --from=b a b`, "flags sorted by name"},
		{`RUN --mount=type=cache,target=/b --network=none --mount=type=cache,target=/a x`, `RUN --mount=type=cache,target=/b --mount=type=cache,target=/a --network=none x`, "repeated flag keeps its order"},
		{`COPY --chown="1:1" a b`, `COPY --chown="1:1" a b`, "flag text kept, quotes included"},
		{`COPY -- --a b`, `COPY -- --a b`, "-- ends the flags"},
		{`ADD --checksum=sha256:00 [ "a", "b" ]`, `ADD --checksum=sha256:00 ["a","b"]`, "flags then exec form"},
		{`env A=1    B="x  y"`, `ENV A=1 B="x  y"`, "ENV pairs: blanks between, quoted kept"},
		{`ENV B=2 A=1`, `ENV B=2 A=1`, "ENV order kept"},
		{`ENV A   x   y`, `ENV A x   y`, "legacy ENV: value as written"},
		{`LABEL a=b   c=d`, `LABEL a=b c=d`, "LABEL pairs"},
		{`WORKDIR /a  b`, `WORKDIR /a  b`, "whole-line argument kept"},
		{`user  app`, `USER app`, "only the blanks after the keyword go"},
		{`expose 80   443/udp`, `EXPOSE 80 443/udp`, "EXPOSE list"},
		{`from --platform=$BUILDPLATFORM  golang  as  build`, `FROM --platform=$BUILDPLATFORM golang AS build`, "FROM with AS"},
		{`healthcheck --timeout=3s --interval=5s cmd [ "curl", "x" ]`, `HEALTHCHECK --interval=5s --timeout=3s CMD ["curl","x"]`, "HEALTHCHECK flags, type, exec form"},
		{`HEALTHCHECK none`, `HEALTHCHECK NONE`, "HEALTHCHECK NONE"},
		{`onbuild  run  make   all`, `ONBUILD RUN make all`, "ONBUILD trigger normalized"},
		{`ARG  V=1   W`, `ARG V=1 W`, "ARG list"},
		{"RUN <<EOF\n  echo  a\n\nEOF\n", "RUN <<EOF\n  echo  a\n\nEOF", "heredoc body kept byte for byte"},
		{"RUN   cat <<EOF  >  /x \\\n  && y\nbody  \\\nEOF", "RUN cat <<EOF > /x && y\nbody  \\\nEOF", "heredoc: only the first logical line is normalized"},
		{`RUN echo a\`, `RUN echo a\`, "trailing backslash without a newline is kept"},
	}
	for _, tt := range tests {
		got, err := Normalize(tt.in)
		if err != nil {
			t.Errorf("%s: Normalize(%q): %v", tt.why, tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("%s: Normalize(%q)\n got %q\nwant %q", tt.why, tt.in, got, tt.want)
		}
		again, err := Normalize(got)
		if err != nil || again != got {
			t.Errorf("%s: not idempotent: Normalize(%q) = %q, %v", tt.why, got, again, err)
		}
	}
}

// TestNormalizeRules checks each rule both ways: a pair that must give the
// same text and a near pair that must not.
func TestNormalizeRules(t *testing.T) {
	tests := []struct {
		rule      string
		a, b      string
		wantEqual bool
	}{
		{"keyword case", "run x", "RUN x", true},
		{"keyword case: arguments keep theirs", "RUN x", "RUN X", false},
		{"blanks between words", "RUN echo  a \t b", "RUN echo a b", true},
		{"blanks inside double quotes", `RUN echo "a  b"`, `RUN echo "a b"`, false},
		{"blanks inside single quotes", `RUN echo 'a  b'`, `RUN echo 'a b'`, false},
		{"blanks between a word and a quote", `RUN echo  "a"`, `RUN echo "a"`, true},
		{"a blank splits words", `RUN echo ab`, `RUN echo a b`, false},
		{"escaped blank", `RUN echo a\ \ b`, `RUN echo a\ b`, false},
		{"blanks after an escaped quote in double quotes", `RUN echo "a\"  b"`, `RUN echo "a\" b"`, false},
		{"blanks inside a quoted ${}", `RUN echo "${A:-"a  b"}"`, `RUN echo "${A:-"a b"}"`, false},
		{"blanks in ${} pattern", `RUN echo ${X#a  b}`, `RUN echo ${X#a b}`, false},
		{"blanks inside $()", `RUN echo "$(printf "a  b")"`, `RUN echo "$(printf "a b")"`, false},
		{"continuation", "RUN a && \\\n  b", "RUN a && b", true},
		{"continuation joins without a blank", "RUN a\\\nb", "RUN a b", false},
		{"trim", " RUN a \n", "RUN a", true},
		{"exec form spacing", `CMD ["a","b"]`, `CMD [ "a", "b" ]`, true},
		{"exec form escapes", `CMD ["\u0061"]`, `CMD ["a"]`, true},
		{"exec form content", `CMD ["a","b"]`, `CMD ["a b"]`, false},
		{"exec form is not shell form", `RUN ["sh","-c","x"]`, `RUN x`, false},
		{"exec form is not shell form, COPY", `COPY ["a","b"]`, `COPY a b`, false},
		{"invalid JSON is shell form", `RUN [ -f x ]`, `RUN  [  -f  x  ]`, true},
		{"flag order", `COPY --chown=1:1 --from=x a b`, `COPY --from=x --chown=1:1 a b`, true},
		{"flag values", `COPY --chown=1:1 a b`, `COPY --chown=1:2 a b`, false},
		{"repeated flag order", `RUN --mount=a --mount=b x`, `RUN --mount=b --mount=a x`, false},
		{"flags are not arguments", `COPY --link a b`, `COPY a --link b`, false},
		{"ENV blanks", `ENV A=1   B=2`, `ENV A=1 B=2`, true},
		{"ENV order", `ENV A=1 A=2`, `ENV A=2 A=1`, false},
		{"legacy ENV value", `ENV A x  y`, `ENV A x y`, false},
		{"legacy ENV name blanks", `ENV A    x`, `ENV A x`, true},
		{"WORKDIR whole line", `WORKDIR /a  b`, `WORKDIR /a b`, false},
		{"HEALTHCHECK type case", `HEALTHCHECK cmd x`, `HEALTHCHECK CMD x`, true},
		{"FROM AS case", `FROM a as b`, `FROM a AS b`, true},
		{"FROM stage name case kept", `FROM a AS b`, `FROM a AS B`, false},
		{"ONBUILD trigger", `ONBUILD run  x`, `ONBUILD RUN x`, true},
		{"heredoc body", "RUN <<EOF\na  b\nEOF", "RUN <<EOF\na b\nEOF", false},
		{"heredoc first line", "RUN  <<EOF\nx\nEOF", "RUN <<EOF\nx\nEOF", true},
		{"heredoc first line CRLF", "RUN <<EOF\r\nx\nEOF", "RUN <<EOF\nx\nEOF", true},
		{"heredoc body CRLF", "RUN <<EOF\nx\r\nEOF", "RUN <<EOF\nx\nEOF", false},
		{"NBSP", "RUN a\u00a0 b", "RUN a\u00a0b", false},
	}
	for _, tt := range tests {
		a, err := Normalize(tt.a)
		if err != nil {
			t.Errorf("%s: Normalize(%q): %v", tt.rule, tt.a, err)
			continue
		}
		b, err := Normalize(tt.b)
		if err != nil {
			t.Errorf("%s: Normalize(%q): %v", tt.rule, tt.b, err)
			continue
		}
		if (a == b) != tt.wantEqual {
			t.Errorf("%s: %q -> %q, %q -> %q: equal = %v, want %v", tt.rule, tt.a, a, tt.b, b, a == b, tt.wantEqual)
		}
	}
}

func TestNormalizeErrors(t *testing.T) {
	tests := []struct {
		in, why string
	}{
		{"", "empty"},
		{" \n\t", "blank"},
		{"RUNX a", "unknown keyword"},
		{"FOO bar", "unknown keyword"},
		{"# comment", "a comment is not an instruction"},
		{"RUN", "no arguments"},
		{"RUN   ", "no arguments after trimming"},
		{"RUN --network=none", "flags only"},
		{`CMD ["a", 1]`, "JSON array with a number"},
		{`CMD [["a"]]`, "JSON array with an array"},
		{`SHELL /bin/bash -c`, "SHELL needs JSON"},
		{"ENV A", "legacy ENV without a value"},
		{"HEALTHCHECK FOO x", "unknown HEALTHCHECK type"},
		{"HEALTHCHECK NONE x", "NONE takes no arguments"},
		{"HEALTHCHECK CMD", "CMD without command"},
		{"ONBUILD ONBUILD RUN x", "ONBUILD trigger ONBUILD"},
		{"ONBUILD FROM x", "ONBUILD trigger FROM"},
		{"ONBUILD", "ONBUILD without trigger"},
		{"RUN a\nRUN b", "two instructions"},
		{"ſhell [\"sh\"]", "non-ASCII case folding is not Docker's"},
		{"RUN " + strings.Repeat("x", MaxInstructionSize), "too long"},
	}
	for _, tt := range tests {
		got, err := Normalize(tt.in)
		if err == nil {
			t.Errorf("%s: Normalize(%.40q) = %q, want an error", tt.why, tt.in, got)
			continue
		}
		if !errors.Is(err, ErrInvalidStep) {
			t.Errorf("%s: Normalize(%.40q): %v does not wrap ErrInvalidStep", tt.why, tt.in, err)
		}
	}
}
