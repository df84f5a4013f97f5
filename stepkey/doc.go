// Package stepkey derives build-cache keys for Dockerfile steps. It is pure:
// no I/O, no state, safe for concurrent use.
//
// A builder about to run instruction I on top of parent P asks the cache
// whether anyone did it before. The question is a key:
//
//	Key(P, step) = sha256(Version, "key", P, Normalize(I), inputs digest, platform, build args)
//
// over a length-prefixed encoding (each field is its 8-byte big-endian length
// followed by its bytes, after the domain separator "cairn-step-v1\x00key\x00"),
// so moving bytes from one field to the next always changes the key. P is the
// chain ID of everything below the step, "" for scratch; after the step, the
// next parent is Next(P, key, diffID): the OCI chain ID ChainID(P, diffID)
// when the step made a layer, else a domain-separated digest of (P, key), so a
// metadata-only step (ENV, WORKDIR, ...) still changes the keys that follow.
//
// # Normalization
//
// Normalize rewrites two instructions to the same text only when Docker
// would run them the same way; when in doubt it keeps the text as written,
// since a spurious miss costs a rebuild and a spurious hit ships a wrong
// layer. The rules:
//
//  1. Leading and trailing whitespace of the instruction is trimmed. The
//     first logical line may end its physical lines in CRLF or LF.
//  2. Line continuations: a backslash at the end of a line (spaces or tabs
//     may follow it) and the line ending are removed and the lines joined, as
//     Docker does; blank lines and lines starting with '#' inside a
//     continuation are dropped, as Docker does. The escape character is
//     always '\'; a client using "# escape=`" joins its lines itself.
//  3. Keyword: upper-cased (ASCII only) and must be one of FROM RUN CMD LABEL
//     EXPOSE ENV ADD COPY ENTRYPOINT VOLUME USER WORKDIR ARG ONBUILD
//     STOPSIGNAL HEALTHCHECK SHELL MAINTAINER; anything else is an error, and
//     so is a keyword without arguments. One space follows the keyword.
//  4. Shell-form words: for RUN, CMD, ENTRYPOINT, COPY, ADD, VOLUME, EXPOSE,
//     FROM, ARG, HEALTHCHECK and the KEY=VALUE form of ENV and LABEL, a run
//     of unquoted, unescaped spaces and tabs becomes one space. Whitespace
//     inside '...', "...", $'...' and ${...}, and an escaped blank ("\ "),
//     are kept (see the examples below). From a construct
//     whose inner quoting the scanner does not follow - an unterminated
//     quote, a $(...) or `...` command substitution, a ${...} holding quotes
//     - to the end of the line, the text is kept exactly as written.
//  5. Other whitespace: when the arguments hold any Unicode space other
//     than space and tab (NBSP, vertical tab, a lone CR, ...) they are kept
//     exactly as written: Docker splits words on those, the shell does not.
//  6. Whole-line arguments: MAINTAINER, USER, WORKDIR and STOPSIGNAL take
//     the rest of the line as one string (a WORKDIR path may hold runs of
//     spaces): kept as written. So is the value of the legacy form
//     "ENV name value" (only the blanks after the name become one space).
//  7. ENV and LABEL pairs keep their order: a key may be set twice and the
//     last one wins (ENV A=1 A=2), so reordering could change the result.
//  8. Exec (JSON) form: for RUN, CMD, ENTRYPOINT, SHELL, COPY, ADD, VOLUME
//     and HEALTHCHECK CMD, arguments that are, as a whole, a JSON array of
//     strings are re-encoded compactly (CMD [ "a", "b" ] is CMD ["a","b"]).
//     A JSON array holding anything but strings is an error, as in Docker;
//     text starting with '[' that is not valid JSON is shell form, as in
//     Docker (RUN [ -f x ] is a shell test). Exec form never equals shell
//     form: RUN ["sh","-c","x"] differs from RUN x (Docker runs them
//     differently), and COPY ["a","b"] differs from COPY a b (a spurious
//     miss, accepted to keep the rule simple). SHELL requires JSON.
//  9. Flags: the leading --name[=value] words of FROM, RUN, COPY, ADD and
//     HEALTHCHECK are sorted by name, since Docker treats them as a set. The
//     sort is stable, so repeated flags (RUN --mount=... --mount=...) keep
//     their order, and each flag's text, quotes included, is kept as written.
//  10. HEALTHCHECK's CMD or NONE is upper-cased; FROM's "AS" is upper-cased.
//  11. ONBUILD: the trigger is normalized as an instruction of its own; ONBUILD,
//     FROM and MAINTAINER are not allowed as triggers.
//  12. Heredocs: an instruction may span several lines only when its first
//     line holds "<<"; the lines after the first logical line are kept byte
//     for byte, CRs included (they are the script or the file).
//
// Examples, each pair the same text after Normalize (=) or not (!=):
//
//	run  apt-get   update          =  RUN apt-get update
//	RUN a && \<newline>    b       =  RUN a && b
//	RUN echo "a  b"                !=  RUN echo "a b"
//	RUN echo ${X#a  b}             !=  RUN echo ${X#a b}
//	RUN echo "$(printf "a  b")"    !=  RUN echo "$(printf "a b")"
//	CMD [ "a", "b" ]               =  CMD ["a","b"]
//	RUN ["sh","-c","x"]            !=  RUN x
//	RUN [ -f x ]                   =  RUN  [  -f  x  ]   (not JSON: shell form)
//	COPY --from=x --chown=1 a b    =  COPY --chown=1 --from=x a b
//	RUN --mount=a --mount=b x      !=  RUN --mount=b --mount=a x
//	ENV A=1   B=2                  =  ENV A=1 B=2
//	ENV A=1 A=2                    !=  ENV A=2 A=1
//	ENV A x  y                     !=  ENV A x y
//	WORKDIR /a  b                  !=  WORKDIR /a b
//	HEALTHCHECK cmd x              =  HEALTHCHECK CMD x
//
// Step.Normalized adds the rules for the other fields:
//
//   - Build args: each must be KEY=VALUE with a non-empty KEY free of
//     whitespace; VALUE may be empty and may hold '='. They are sorted by
//     key, exact duplicates are dropped, and one KEY with two values is an
//     error (which one the step saw would be a guess).
//   - Platform: lower-cased, "" or os/arch or os/arch/variant made of
//     [a-z0-9._-]. Aliases are not mapped (x86_64 is not amd64): a miss,
//     never a wrong hit.
//   - Inputs digest: "" or a valid digest (sha256, sha384 or sha512 with
//     lower-case hex of the right length); unknown algorithms and bad hex
//     are errors. COPY and ADD need one, even COPY --from=stage or a heredoc
//     COPY (pass the digest of what is copied, or of nothing), because
//     without it two different build contexts would share a key. Other
//     instructions may carry one (a RUN with a bind mount of the context).
//
// Known limit: rule 4 assumes a POSIX shell. Under a SHELL that is not one,
// or Windows cmd (whose echo prints its arguments as written), two RUNs that
// differ only in unquoted whitespace share a key. A SHELL step is part of the
// parent chain, so only steps under the same such SHELL (or both on Windows
// images) can collide, and only when they differ in nothing but that
// whitespace. The same holds for a script that records its own source text
// (set -v with stderr redirected into the image).
//
// Every error wraps ErrInvalidStep. Changing a rule so that some key changes
// means bumping Version; the golden vectors in the tests guard against doing
// it by accident.
package stepkey
