package auth

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Config is the credentials file (--auth-file), YAML:
//
//	tokens:
//	  - name: ci-main              # the identity's name, in audit lines
//	    sha256: <64 hex digits>    # HashToken of the token; never the token
//	    scopes:
//	      - actions: [read, write] # read, write, delete, admin
//	        namespaces: [main, "cache/app/*"]
//	  - name: pr-1234
//	    sha256: ...
//	    scopes:
//	      - {actions: [read], namespaces: [main, pr/1234]}
//	      - {actions: [write], namespaces: [pr/1234]}
//	anonymous:                     # optional: what a client without a token may do
//	  - {actions: [read], namespaces: ["public/*"]}
//
// Namespace patterns are exact ("main"), a prefix ("pr/*": everything below
// pr/, at any depth) or "*" (everything). The file is checked strictly:
// unknown fields, unknown actions, bad hashes, empty or duplicate names,
// duplicate hashes and bad patterns are errors naming the line, and a file
// that grants nothing at all is refused (an empty file is far more often a
// half-written one than a wish to lock everybody out).
type Config struct {
	Tokens    []TokenConfig `yaml:"tokens,omitempty"`
	Anonymous []ScopeConfig `yaml:"anonymous,omitempty"`
}

// TokenConfig is one token of the file.
type TokenConfig struct {
	Name   string        `yaml:"name"`
	SHA256 string        `yaml:"sha256"`
	Scopes []ScopeConfig `yaml:"scopes"`
}

// ScopeConfig is one scope: these actions over these namespace patterns.
type ScopeConfig struct {
	Actions    []string `yaml:"actions,flow"`
	Namespaces []string `yaml:"namespaces,flow"`
}

// ParseConfig decodes and validates a credentials file.
func ParseConfig(data []byte) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("auth: credentials file is empty")
		}
		return nil, fmt.Errorf("auth: credentials file: %w", err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return nil, errors.New("auth: credentials file holds more than one YAML document")
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil { // cannot fail after the decode above
		return nil, fmt.Errorf("auth: credentials file: %w", err)
	}
	if _, err := c.compile(lineFinder(&root)); err != nil {
		return nil, err
	}
	return &c, nil
}

// Marshal encodes the file, as `cairn token new` prints an entry to paste.
// ParseConfig(c.Marshal()) gives c back.
func (c *Config) Marshal() ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, fmt.Errorf("auth: encode credentials: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("auth: encode credentials: %w", err)
	}
	return b.Bytes(), nil
}

// policy is a validated Config, ready to answer: identities by token hash
// and by name, and the anonymous identity (without scopes when the file
// gives anonymous clients none).
type policy struct {
	byHash    map[[sha256.Size]byte]*Identity
	byName    map[string]*Identity
	anonymous *Identity
}

// compile validates c and builds its policy. line gives the line of an
// entry of a section ("tokens", "anonymous") for messages, or 0.
func (c *Config) compile(line func(section string, i int) int) (*policy, error) {
	p := &policy{
		byHash:    make(map[[sha256.Size]byte]*Identity, len(c.Tokens)),
		byName:    make(map[string]*Identity, len(c.Tokens)),
		anonymous: &Identity{Name: AnonymousName, Anonymous: true},
	}
	var errs []error
	fail := func(section string, i int, what string, err error) {
		at := fmt.Sprintf("%s[%d]", section, i)
		if what != "" {
			at += " " + what
		}
		if l := line(section, i); l > 0 {
			at = fmt.Sprintf("line %d: %s", l, at)
		}
		errs = append(errs, fmt.Errorf("%s: %w", at, err))
	}
	for i, t := range c.Tokens {
		what := fmt.Sprintf("(%q)", t.Name)
		if err := validName(t.Name); err != nil {
			fail("tokens", i, what, fmt.Errorf("name: %w", err))
			continue
		}
		sum, err := parseHash(t.SHA256)
		if err != nil {
			fail("tokens", i, what, fmt.Errorf("sha256: %w", err))
			continue
		}
		scopes, err := compileScopes(t.Scopes)
		if err != nil {
			fail("tokens", i, what, err)
			continue
		}
		if _, dup := p.byName[t.Name]; dup {
			fail("tokens", i, what, errors.New("name: used by an earlier token"))
			continue
		}
		if prev, dup := p.byHash[sum]; dup {
			fail("tokens", i, what, fmt.Errorf("sha256: same hash as token %q", prev.Name))
			continue
		}
		id := &Identity{Name: t.Name, scopes: scopes}
		p.byName[t.Name] = id
		p.byHash[sum] = id
	}
	for i, s := range c.Anonymous {
		sc, err := compileScope(s)
		if err != nil {
			fail("anonymous", i, "", err)
			continue
		}
		p.anonymous.scopes = append(p.anonymous.scopes, sc)
	}
	// A token may do at least what a client without one may: a CI job
	// that logs in (one set of credentials per registry host) still
	// pulls the public base images.
	for _, id := range p.byName {
		id.scopes = append(id.scopes, p.anonymous.scopes...)
	}
	if len(errs) == 0 && len(p.byName) == 0 && len(p.anonymous.scopes) == 0 {
		errs = append(errs, errors.New("grants nothing: no tokens and no anonymous scopes"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("auth: credentials file: %w", err)
	}
	return p, nil
}

func compileScopes(cs []ScopeConfig) ([]scope, error) {
	if len(cs) == 0 {
		return nil, errors.New("scopes: none (a token must be allowed something)")
	}
	out := make([]scope, 0, len(cs))
	for j, c := range cs {
		s, err := compileScope(c)
		if err != nil {
			return nil, fmt.Errorf("scopes[%d]: %w", j, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func compileScope(c ScopeConfig) (scope, error) {
	var s scope
	if len(c.Actions) == 0 {
		return s, errors.New("actions: none")
	}
	for _, name := range c.Actions {
		a, err := ParseAction(name)
		if err != nil {
			return s, fmt.Errorf("actions: %w", err)
		}
		if s.actions.has(a) {
			return s, fmt.Errorf("actions: %s listed twice", a)
		}
		s.actions.add(a)
	}
	if len(c.Namespaces) == 0 {
		return s, errors.New("namespaces: none")
	}
	for _, n := range c.Namespaces {
		p, err := parsePattern(n)
		if err != nil {
			return s, fmt.Errorf("namespaces: %w", err)
		}
		s.patterns = append(s.patterns, p)
	}
	return s, nil
}

// validName checks a token's name: it goes into audit lines and bearer
// tokens, so it is short and plain.
func validName(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > 128:
		return errors.New("longer than 128 bytes")
	case s == AnonymousName:
		return fmt.Errorf("%q is reserved for clients without a token", s)
	}
	for _, r := range s {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9', strings.ContainsRune("._-@/:+", r):
		default:
			return fmt.Errorf("character %q not allowed (letters, digits and ._-@/:+)", r)
		}
	}
	return nil
}

// emptyHash is the SHA-256 of the empty string: a file holding it would
// accept an empty token.
var emptyHash = sha256.Sum256(nil)

func parseHash(s string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	if len(s) != 2*sha256.Size {
		return sum, fmt.Errorf("want %d hex digits, got %d characters", 2*sha256.Size, len(s))
	}
	if _, err := hex.Decode(sum[:], []byte(s)); err != nil {
		return sum, fmt.Errorf("not hex: %w", err)
	}
	if sum == emptyHash {
		return sum, errors.New("the hash of the empty token")
	}
	return sum, nil
}

// lineFinder returns the line of entry i of a top-level section of the
// document root, or 0 if there is none.
func lineFinder(root *yaml.Node) func(section string, i int) int {
	return func(section string, i int) int {
		if root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
			return 0
		}
		m := root.Content[0]
		if m.Kind != yaml.MappingNode {
			return 0
		}
		for k := 0; k+1 < len(m.Content); k += 2 {
			if m.Content[k].Value == section && i < len(m.Content[k+1].Content) {
				return m.Content[k+1].Content[i].Line
			}
		}
		return 0
	}
}

func noLines(string, int) int { return 0 }

// tokenPrefix starts every token NewToken makes, so that secret scanners
// and people can tell a cairn token at a glance.
const tokenPrefix = "cairn_"

// NewToken returns a new random token and its hash for the credentials
// file. The token is 32 random bytes (256 bits: no search can find one, so
// a fast unsalted hash is the right way to store it, as for GitHub's
// tokens), base64url-encoded after "cairn_".
func NewToken() (token, sha256hex string, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("auth: new token: %w", err)
	}
	token = tokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	return token, HashToken(token), nil
}

// HashToken returns the hex SHA-256 of a token's bytes, as the credentials
// file stores it.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}
