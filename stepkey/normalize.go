package stepkey

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"unicode"
)

// keywords are the Dockerfile instructions Normalize accepts.
var keywords = map[string]bool{
	"FROM": true, "RUN": true, "CMD": true, "LABEL": true, "EXPOSE": true,
	"ENV": true, "ADD": true, "COPY": true, "ENTRYPOINT": true, "VOLUME": true,
	"USER": true, "WORKDIR": true, "ARG": true, "ONBUILD": true,
	"STOPSIGNAL": true, "HEALTHCHECK": true, "SHELL": true, "MAINTAINER": true,
}

// Normalize returns the canonical text of a Dockerfile instruction, following
// the rules in the package doc. It returns an error wrapping ErrInvalidStep
// for an empty or oversized instruction, an unknown keyword, missing
// arguments, a JSON array holding something other than strings, and for the
// other shapes Docker itself rejects and that are listed there.
// Normalize is idempotent: Normalize(Normalize(x)) == Normalize(x).
func Normalize(instruction string) (string, error) {
	if len(instruction) > MaxInstructionSize {
		return "", fmt.Errorf("%w: instruction of %d bytes, more than %d", ErrInvalidStep, len(instruction), MaxInstructionSize)
	}
	s := strings.TrimSpace(instruction)
	if s == "" {
		return "", fmt.Errorf("%w: empty instruction", ErrInvalidStep)
	}
	line, body := logicalLine(s)
	out, err := normalizeLine(line, false)
	if err != nil {
		return "", err
	}
	if body != "" {
		if !strings.Contains(line, "<<") {
			return "", fmt.Errorf("%w: %s: instruction spans several lines without a line continuation or heredoc", ErrInvalidStep, keyword(out))
		}
		// Heredoc bodies are the script itself: kept byte for byte.
		out += "\n" + body
	}
	return out, nil
}

// logicalLine joins the first line of s with the lines that a trailing
// backslash (optionally followed by spaces or tabs) continues, dropping the
// backslash and the line ending (LF or CRLF) as Docker does, and Docker's
// blank and comment lines inside a continuation. It returns that logical
// line and whatever follows it (heredoc bodies), untouched: a CR there is
// part of the script.
func logicalLine(s string) (line, rest string) {
	var b strings.Builder
	continued := false
	for {
		ln, after, more := strings.Cut(s, "\n")
		ln = strings.TrimSuffix(ln, "\r")
		if continued {
			if t := strings.TrimLeft(ln, " \t"); t == "" || t[0] == '#' {
				if !more {
					return b.String(), ""
				}
				s = after
				continue
			}
		}
		if more {
			if t := strings.TrimRight(ln, " \t"); strings.HasSuffix(t, `\`) {
				b.WriteString(t[:len(t)-1])
				s, continued = after, true
				continue
			}
			b.WriteString(ln)
			return b.String(), after
		}
		b.WriteString(ln)
		return b.String(), ""
	}
}

// normalizeLine normalizes one logical line. onbuild is true for the trigger
// of an ONBUILD.
func normalizeLine(line string, onbuild bool) (string, error) {
	line = strings.TrimSpace(line)
	word, rest := cutBlank(line)
	kw := asciiUpper(word)
	if !keywords[kw] {
		return "", fmt.Errorf("%w: unknown instruction %q", ErrInvalidStep, word)
	}
	if onbuild && (kw == "ONBUILD" || kw == "FROM" || kw == "MAINTAINER") {
		return "", fmt.Errorf("%w: %s is not allowed as an ONBUILD trigger", ErrInvalidStep, kw)
	}
	if rest == "" {
		return "", fmt.Errorf("%w: %s needs arguments", ErrInvalidStep, kw)
	}
	if kw == "ONBUILD" {
		trigger, err := normalizeLine(rest, true)
		if err != nil {
			return "", err
		}
		return kw + " " + trigger, nil
	}
	if strings.IndexFunc(rest, oddSpace) >= 0 {
		// Docker splits words on any Unicode space, the shell on spaces
		// and tabs only: rather than guess, keep the arguments as written.
		return kw + " " + rest, nil
	}
	switch kw {
	case "MAINTAINER", "USER", "WORKDIR", "STOPSIGNAL":
		// Docker takes the whole rest of the line as one string: every
		// byte of it counts (WORKDIR /a  b is the directory "/a  b").
		return kw + " " + rest, nil
	case "ENV", "LABEL":
		words := shellWords(rest)
		if !strings.Contains(words[0], "=") {
			// Legacy "ENV name value": the value is the rest of the line,
			// as written.
			name, value := cutBlank(rest)
			if value == "" {
				return "", fmt.Errorf("%w: %s %s needs a value", ErrInvalidStep, kw, name)
			}
			return kw + " " + name + " " + value, nil
		}
		return kw + " " + strings.Join(words, " "), nil
	case "SHELL":
		canon, ok, err := execForm(kw, rest)
		if err != nil {
			return "", err
		}
		if !ok {
			return "", fmt.Errorf("%w: SHELL needs a JSON array of strings", ErrInvalidStep)
		}
		return kw + " " + canon, nil
	}

	var flags []string
	if kw == "FROM" || kw == "RUN" || kw == "COPY" || kw == "ADD" || kw == "HEALTHCHECK" {
		flags, rest = cutFlags(rest)
		if rest == "" {
			return "", fmt.Errorf("%w: %s needs arguments after its flags", ErrInvalidStep, kw)
		}
	}
	parts := append([]string{kw}, flags...)

	switch kw {
	case "RUN", "CMD", "ENTRYPOINT", "COPY", "ADD", "VOLUME":
		args, err := maybeExec(kw, rest)
		if err != nil {
			return "", err
		}
		parts = append(parts, args)
	case "HEALTHCHECK":
		sub, subRest := cutBlank(rest)
		switch asciiUpper(sub) {
		case "NONE":
			if subRest != "" {
				return "", fmt.Errorf("%w: HEALTHCHECK NONE takes no arguments", ErrInvalidStep)
			}
			parts = append(parts, "NONE")
		case "CMD":
			if subRest == "" {
				return "", fmt.Errorf("%w: HEALTHCHECK CMD needs a command", ErrInvalidStep)
			}
			args, err := maybeExec(kw, subRest)
			if err != nil {
				return "", err
			}
			parts = append(parts, "CMD", args)
		default:
			return "", fmt.Errorf("%w: HEALTHCHECK: unknown type %q, want CMD or NONE", ErrInvalidStep, sub)
		}
	case "FROM":
		words := shellWords(rest)
		if len(words) == 3 && strings.EqualFold(words[1], "as") {
			words[1] = "AS"
		}
		parts = append(parts, words...)
	default: // ARG, EXPOSE: whitespace-separated lists
		parts = append(parts, shellWords(rest)...)
	}
	return strings.Join(parts, " "), nil
}

// maybeExec returns the canonical JSON of an exec-form argument list, or the
// whitespace-normalized shell form when s is not a JSON array (Docker's
// fallback, so `RUN [ -f x ]` is the shell command it looks like).
func maybeExec(kw, s string) (string, error) {
	canon, ok, err := execForm(kw, s)
	if err != nil || ok {
		return canon, err
	}
	return strings.Join(shellWords(s), " "), nil
}

// execForm re-encodes s when it is, as a whole, a JSON array: compactly, with
// Go's string escaping and no HTML escaping. ok is false when s is not valid
// JSON starting with '['; a valid array holding a non-string is an error, as
// in Docker.
func execForm(kw, s string) (canon string, ok bool, err error) {
	if !strings.HasPrefix(s, "[") {
		return "", false, nil
	}
	var v []any
	if json.Unmarshal([]byte(s), &v) != nil {
		return "", false, nil
	}
	strs := make([]string, len(v))
	for i, e := range v {
		str, isStr := e.(string)
		if !isStr {
			return "", false, fmt.Errorf("%w: %s: JSON form must be an array of strings", ErrInvalidStep, kw)
		}
		strs[i] = str
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(strs); err != nil {
		return "", false, fmt.Errorf("%w: %s: %v", ErrInvalidStep, kw, err)
	}
	return strings.TrimSuffix(b.String(), "\n"), true, nil
}

// cutFlags splits the leading --name[=value] words off s, sorted by name
// (stable, so a repeated flag such as --mount keeps its order). A lone "--"
// or a word the scanner keeps verbatim ends the flags.
func cutFlags(s string) (flags []string, rest string) {
	rest = s
	for strings.HasPrefix(rest, "--") {
		w, r, verbatim := splitWord(rest)
		if verbatim || w == "--" {
			break
		}
		flags = append(flags, w)
		rest = r
	}
	slices.SortStableFunc(flags, func(a, b string) int {
		return strings.Compare(flagName(a), flagName(b))
	})
	return flags, rest
}

func flagName(f string) string {
	name, _, _ := strings.Cut(f, "=")
	return name
}

// shellWords splits s (no leading blanks) into words at runs of unquoted,
// unescaped spaces and tabs. Quotes and escapes stay in the words. The last
// word may be a verbatim tail holding blanks: see splitWord.
func shellWords(s string) []string {
	var words []string
	for s != "" {
		w, rest, _ := splitWord(s)
		words = append(words, w)
		s = rest
	}
	return words
}

// splitWord returns the first word of s (which starts with a non-blank) and
// the rest with its leading blanks removed. Single, double and $'...' quotes
// and backslash escapes are honoured, and a ${...} without quotes or command
// substitutions inside is part of the word as written. When s holds a
// construct the scanner does not follow, with whitespace that may count
// inside it - an unterminated quote, a $(...) or `...` command substitution,
// a ${...} holding quotes - the whole of s is returned as the word, verbatim
// set, so that its whitespace is kept as written.
func splitWord(s string) (word, rest string, verbatim bool) {
	i := 0
	for i < len(s) {
		switch c := s[i]; {
		case c == ' ' || c == '\t':
			return s[:i], strings.TrimLeft(s[i:], " \t"), false
		case c == '\\':
			i += 2
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return s, "", true
			}
			i += j + 2
		case c == '$' && i+1 < len(s) && s[i+1] == '\'':
			end, ok := ansiQuoteEnd(s, i+2)
			if !ok {
				return s, "", true
			}
			i = end
		case c == '"':
			end, ok := doubleQuoteEnd(s, i+1)
			if !ok {
				return s, "", true
			}
			i = end
		case c == '`' || c == '$' && i+1 < len(s) && s[i+1] == '(':
			return s, "", true
		case c == '$' && i+1 < len(s) && s[i+1] == '{':
			end, ok := braceEnd(s, i)
			if !ok {
				return s, "", true
			}
			i = end
		default:
			i++
		}
	}
	return s, "", false
}

// ansiQuoteEnd returns the index after the quote closing a $'...' whose body
// starts at i; backslash escapes a quote there.
func ansiQuoteEnd(s string, i int) (int, bool) {
	for i < len(s) {
		switch s[i] {
		case '\\':
			i += 2
		case '\'':
			return i + 1, true
		default:
			i++
		}
	}
	return 0, false
}

// doubleQuoteEnd returns the index after the quote closing a "..." whose body
// starts at i. Command substitutions and quoted ${...} open nested quoting
// contexts the scanner does not follow: not ok.
func doubleQuoteEnd(s string, i int) (int, bool) {
	for i < len(s) {
		switch c := s[i]; {
		case c == '\\':
			i += 2
		case c == '"':
			return i + 1, true
		case c == '`' || c == '$' && i+1 < len(s) && s[i+1] == '(':
			return 0, false
		case c == '$' && i+1 < len(s) && s[i+1] == '{':
			end, ok := braceEnd(s, i)
			if !ok {
				return 0, false
			}
			i = end
		default:
			i++
		}
	}
	return 0, false
}

// braceEnd returns the index after the brace closing the ${ at i, following
// nested ${...} and backslash escapes. Quotes and command substitutions
// inside are not followed: not ok.
func braceEnd(s string, i int) (int, bool) {
	depth := 0
	for i < len(s) {
		switch c := s[i]; {
		case c == '$' && i+1 < len(s) && s[i+1] == '{':
			depth++
			i += 2
		case c == '}':
			depth--
			i++
			if depth == 0 {
				return i, true
			}
		case c == '\\':
			i += 2
		case c == '\'' || c == '"' || c == '`' || c == '$' && i+1 < len(s) && s[i+1] == '(':
			return 0, false
		default:
			i++
		}
	}
	return 0, false
}

// cutBlank splits s at its first run of spaces and tabs.
func cutBlank(s string) (before, after string) {
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimLeft(s[i:], " \t")
}

// oddSpace reports Unicode whitespace other than space and tab.
func oddSpace(r rune) bool {
	return r != ' ' && r != '\t' && unicode.IsSpace(r)
}

// asciiUpper upper-cases ASCII letters only: Docker compares keywords
// case-insensitively in ASCII, and strings.ToUpper would map 'ſ' to 'S'.
func asciiUpper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}
