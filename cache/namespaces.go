package cache

import (
	"fmt"
	"hash/fnv"
	"sync"

	"github.com/opencontainers/go-digest"
)

// Step namespaces. A step record lives in one namespace: "" is the
// default, where every record written before namespaces existed lives and
// where a server without auth writes; others are named like registry
// repositories ("main", "pr/1234"). A lookup searches an ordered list of
// them (a pull request's own, then main's), a write goes to exactly one, so
// that a pull request's token, which writes only pr/N, cannot make any
// lookup of main hit a layer it pushed.
//
// Records of namespace ns are stored under a key derived from ns and the
// step's key (stepStoreKey): the index, the hit counts, the steps-by-layer
// list and the backend objects all work on that key as they did on the
// step key, and the default namespace's key is the step key itself, so
// stores written before namespaces read as they were.

// MaxNamespaces bounds the namespaces one lookup searches.
const MaxNamespaces = 16

// ValidNamespace checks a namespace name: "" (the default) or a name of
// the registry's repository grammar (see ValidRepoName).
func ValidNamespace(ns string) error {
	if ns == "" {
		return nil
	}
	if err := ValidRepoName(ns); err != nil {
		return fmt.Errorf("%w: namespace %q: %w", ErrInvalidArgument, clip(ns), err)
	}
	return nil
}

// validNamespaces checks a lookup's list: at most MaxNamespaces, each
// valid, none twice; empty means the default namespace alone.
func validNamespaces(nss []string) ([]string, error) {
	if len(nss) == 0 {
		return []string{""}, nil
	}
	if len(nss) > MaxNamespaces {
		return nil, fmt.Errorf("%w: %d namespaces, at most %d", ErrInvalidArgument, len(nss), MaxNamespaces)
	}
	for i, ns := range nss {
		if err := ValidNamespace(ns); err != nil {
			return nil, err
		}
		for _, o := range nss[:i] {
			if o == ns {
				return nil, fmt.Errorf("%w: namespace %q listed twice", ErrInvalidArgument, clip(ns))
			}
		}
	}
	return nss, nil
}

// stepStoreKey is where step key's record of namespace ns is stored.
func stepStoreKey(ns string, key digest.Digest) digest.Digest {
	if ns == "" {
		return key
	}
	return digest.FromString("cairn step namespace\x00" + ns + "\x00" + string(key))
}

// storeKey is where r is stored.
func (r *StepRecord) storeKey() digest.Digest { return stepStoreKey(r.Namespace, r.Key) }

// stepLocks serialise the writes of one step record (striped by its
// store key): a record is checked, then written to the backend, then to
// the index, and a second writer of the same key must see the first's
// record before it writes its own object over it.
type stepLocks [64]sync.Mutex

func (l *stepLocks) lock(key digest.Digest) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(key))
	mu := &l[h.Sum32()%uint32(len(l))]
	mu.Lock()
	return mu
}
