package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/stepkey"
	"github.com/opencontainers/go-digest"
)

// Bounds of what a step record stores, so that a record takes at most
// about 256 KiB (twice: the index and the backend): a config fragment of
// 64 KiB, an instruction of 128 KiB after normalization (real Dockerfile
// instructions, heredoc scripts included, are a few KiB), and build args
// of 64 KiB together. Lookups accept the larger instructions stepkey
// does; such steps are simply never recorded.
const (
	MaxConfigSize      = 64 << 10
	MaxInstructionSize = 128 << 10
	MaxBuildArgsSize   = 64 << 10
)

// MaxChainSteps bounds the steps of one LookupChain call.
const MaxChainSteps = 1000

// LayerRef is the layer a step produced.
type LayerRef struct {
	Digest    digest.Digest // the committed layer
	DiffID    digest.Digest // digest of its uncompressed content; "" means Digest
	Size      int64         // 0 means the committed layer's size
	MediaType string        // "" means the committed layer's media type
}

// StepRecord is the cached result of one build step.
type StepRecord struct {
	// Namespace holds the record: "" is the default one. A lookup
	// searches an ordered list of namespaces; a record is written to one.
	Namespace string
	Key       digest.Digest // stepkey.Key(Parent, Step)
	Parent    digest.Digest // chain ID below the step; "" is scratch
	Step      stepkey.Step  // normalized
	Layer     *LayerRef     // nil: the step makes no layer
	Config    []byte        // opaque config fragment, at most MaxConfigSize
	Created   time.Time
	Hits      uint64        // lookups that returned the record (lazily persisted)
	LastHit   time.Time     // zero if never hit
	Next      digest.Digest // stepkey.Next(Parent, Key, DiffID): the parent of the following step
	// Divergences counts the records refused for the same key and
	// namespace because they named another layer (see RecordStepIn), and
	// when the last one was.
	Divergences    uint64
	LastDivergence time.Time
}

// stepJSON is a step record's stored form, in the index (k/<key>) and the
// backend (steps/<hex>). Hits live apart, in h/<key>, so the record itself
// never changes once written.
type stepJSON struct {
	Version      int           `json:"version"`
	Namespace    string        `json:"namespace,omitempty"`
	Key          digest.Digest `json:"key"`
	Parent       digest.Digest `json:"parent,omitempty"`
	Instruction  string        `json:"instruction"`
	InputsDigest digest.Digest `json:"inputsDigest,omitempty"`
	Platform     string        `json:"platform,omitempty"`
	BuildArgs    []string      `json:"buildArgs,omitempty"`
	Layer        *layerJSON    `json:"layer,omitempty"`
	Config       []byte        `json:"config,omitempty"`
	Created      time.Time     `json:"created"`
	Next         digest.Digest `json:"next"`
}

type layerJSON struct {
	Digest    digest.Digest `json:"digest"`
	DiffID    digest.Digest `json:"diffID"`
	Size      int64         `json:"size"`
	MediaType string        `json:"mediaType"`
}

const stepVersion = 1

func (r *StepRecord) marshal() ([]byte, error) {
	j := stepJSON{Version: stepVersion, Namespace: r.Namespace, Key: r.Key, Parent: r.Parent, Instruction: r.Step.Instruction,
		InputsDigest: r.Step.InputsDigest, Platform: r.Step.Platform, BuildArgs: r.Step.BuildArgs,
		Config: r.Config, Created: r.Created, Next: r.Next}
	if r.Layer != nil {
		j.Layer = &layerJSON{Digest: r.Layer.Digest, DiffID: r.Layer.DiffID, Size: r.Layer.Size, MediaType: r.Layer.MediaType}
	}
	return json.Marshal(j)
}

func unmarshalStep(b []byte) (StepRecord, error) {
	var j stepJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return StepRecord{}, err
	}
	if j.Version != stepVersion {
		return StepRecord{}, fmt.Errorf("unsupported step record version %d", j.Version)
	}
	if err := j.Key.Validate(); err != nil {
		return StepRecord{}, fmt.Errorf("step record key: %w", err)
	}
	if err := ValidNamespace(j.Namespace); err != nil {
		return StepRecord{}, fmt.Errorf("step record: %w", err)
	}
	r := StepRecord{Namespace: j.Namespace, Key: j.Key, Parent: j.Parent, Step: stepkey.Step{Instruction: j.Instruction,
		InputsDigest: j.InputsDigest, Platform: j.Platform, BuildArgs: j.BuildArgs},
		Config: j.Config, Created: j.Created.UTC(), Next: j.Next}
	if j.Layer != nil {
		r.Layer = &LayerRef{Digest: j.Layer.Digest, DiffID: j.Layer.DiffID, Size: j.Layer.Size, MediaType: j.Layer.MediaType}
	}
	return r, nil
}

// stepLayer returns the layer a stored step record names, "" for none or
// for a record it cannot read (index.DB.SetStepLayer).
func stepLayer(v []byte) digest.Digest {
	var j struct {
		Layer *struct {
			Digest digest.Digest `json:"digest"`
		} `json:"layer"`
	}
	if json.Unmarshal(v, &j) != nil || j.Layer == nil {
		return ""
	}
	return j.Layer.Digest
}

// ListSteps returns up to pageSize step records in key order, after the
// position token names ("" for the first page), and the next page's
// token ("" after the last). With layer set, only the records naming it.
// Listing does not count as hits; Hits is what is stored.
func (c *Cache) ListSteps(ctx context.Context, token string, pageSize int, layer digest.Digest) ([]StepRecord, string, error) {
	if err := c.begin(ctx); err != nil {
		return nil, "", fmt.Errorf("cache: list steps: %w", err)
	}
	defer c.end()
	after, pageSize, err := digestPage(token, pageSize)
	if err != nil {
		return nil, "", fmt.Errorf("cache: list steps: %w", err)
	}
	if layer != "" {
		if err := ParseLayerDigest(layer); err != nil {
			return nil, "", fmt.Errorf("cache: list steps: %w", err)
		}
	}
	var out []StepRecord
	more, err := c.idx.StepPage(after, layer, pageSize, func(key digest.Digest, v []byte, h index.Hits) error {
		rec, err := unmarshalStep(v)
		if err != nil {
			return fmt.Errorf("%w: step %s: %w", ErrDataLoss, key, err)
		}
		rec.Hits, rec.LastHit = h.N, h.Last
		out = append(out, rec)
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("cache: list steps: %w", err)
	}
	var next string
	if more && len(out) > 0 {
		next = nextPageToken(out[len(out)-1].storeKey())
	}
	return out, next, nil
}

// DeleteStep is DeleteStepIn the default namespace.
func (c *Cache) DeleteStep(ctx context.Context, key digest.Digest) error {
	return c.DeleteStepIn(ctx, "", key)
}

// DeleteStepIn removes step key's record of namespace ns: the index entry,
// then the backend object (a crash in between leaves an object that
// Reindex restores, as if the delete had not happened). ErrNotFound if
// there is none. It is how an operator replaces a record: delete, then
// record again.
func (c *Cache) DeleteStepIn(ctx context.Context, ns string, stepKey digest.Digest) error {
	if err := c.begin(ctx); err != nil {
		return fmt.Errorf("cache: delete step: %w", err)
	}
	defer c.end()
	if err := ParseLayerDigest(stepKey); err != nil {
		return fmt.Errorf("cache: delete step: %w", err)
	}
	if err := ValidNamespace(ns); err != nil {
		return fmt.Errorf("cache: delete step: %w", err)
	}
	key := stepStoreKey(ns, stepKey)
	defer c.stepLocks.lock(key).Unlock()
	var layer digest.Digest
	found, err := false, c.idx.View("read step", func(tx *index.Tx) (err error) {
		_, err = tx.StepValue(key, func(v []byte) error { layer = stepLayer(v); return nil })
		return err
	})
	if err == nil {
		found, err = c.idx.DeleteStep(key, layer)
	}
	c.steps.forget(key)
	if err != nil {
		return fmt.Errorf("cache: delete step: %w", err)
	}
	if !found {
		return fmt.Errorf("cache: delete step: step %s: %w", stepKey, ErrNotFound)
	}
	if err := c.store.Delete(ctx, stepObjectKey(key)); err != nil && !errors.Is(err, backend.ErrNotFound) {
		return fmt.Errorf("cache: delete step %s: %w", key, backendErr("delete step record", err))
	}
	return nil
}

// stepKey validates the inputs of a step operation and derives its key.
func stepKey(parent digest.Digest, s stepkey.Step) (digest.Digest, stepkey.Step, error) {
	n, err := s.Normalized()
	if err != nil {
		return "", stepkey.Step{}, fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	key, err := stepkey.NormalizedKey(parent, n)
	if err != nil {
		return "", stepkey.Step{}, fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	return key, n, nil
}

// ErrStepDiverged reports a step record refused because the namespace
// already holds a record for the same key that names another layer (or
// none): records are immutable, so that what a build once cached cannot be
// replaced under the builds that use it. It is also ErrFailedPrecondition.
var ErrStepDiverged = fmt.Errorf("%w: step diverged", ErrFailedPrecondition)

// RecordStep is RecordStepIn the default namespace.
func (c *Cache) RecordStep(ctx context.Context, parent digest.Digest, s stepkey.Step, layer *LayerRef, config []byte) (StepRecord, error) {
	return c.RecordStepIn(ctx, "", parent, s, layer, config)
}

// RecordStepIn records in namespace ns that step s on top of parent
// produced layer (nil: no layer) with the given config fragment. The layer
// must be committed (else ErrFailedPrecondition). The record is written to
// the backend, then the index. A record is immutable: recording the same
// step with the same layer again returns the record there (config and
// all); with another layer (or none where there was one) it is refused
// with ErrStepDiverged and counted (StepRecord.Divergences, and
// Cache.Divergences for metrics).
func (c *Cache) RecordStepIn(ctx context.Context, ns string, parent digest.Digest, s stepkey.Step, layer *LayerRef, config []byte) (StepRecord, error) {
	if err := c.begin(ctx); err != nil {
		return StepRecord{}, fmt.Errorf("cache: record step: %w", err)
	}
	defer c.end()
	rec, err := c.recordStep(ctx, ns, parent, s, layer, config)
	if err != nil {
		return StepRecord{}, fmt.Errorf("cache: record step: %w", err)
	}
	return rec, nil
}

// Divergences is the number of step records refused since Open because
// their namespace held another layer for the same step.
func (c *Cache) Divergences() int64 { return c.divergences.Load() }

func (c *Cache) recordStep(ctx context.Context, ns string, parent digest.Digest, s stepkey.Step, layer *LayerRef, config []byte) (StepRecord, error) {
	if err := ValidNamespace(ns); err != nil {
		return StepRecord{}, err
	}
	key, n, err := stepKey(parent, s)
	if err != nil {
		return StepRecord{}, err
	}
	if len(config) > MaxConfigSize {
		return StepRecord{}, fmt.Errorf("%w: config of %d bytes, at most %d", ErrInvalidArgument, len(config), MaxConfigSize)
	}
	if len(n.Instruction) > MaxInstructionSize {
		return StepRecord{}, fmt.Errorf("%w: instruction of %d bytes, at most %d can be recorded", ErrInvalidArgument, len(n.Instruction), MaxInstructionSize)
	}
	args := 0
	for _, a := range n.BuildArgs {
		args += len(a)
	}
	if args > MaxBuildArgsSize {
		return StepRecord{}, fmt.Errorf("%w: build args of %d bytes together, at most %d", ErrInvalidArgument, args, MaxBuildArgsSize)
	}
	rec := StepRecord{Namespace: ns, Key: key, Parent: parent, Step: n, Created: time.Now().UTC()}
	if len(config) > 0 {
		rec.Config = bytes.Clone(config)
	}
	var diffID, layerDigest digest.Digest
	if layer != nil {
		l := *layer
		if err := ParseLayerDigest(l.Digest); err != nil {
			return StepRecord{}, err
		}
		if l.DiffID == "" {
			l.DiffID = l.Digest
		} else if err := ParseLayerDigest(l.DiffID); err != nil {
			return StepRecord{}, fmt.Errorf("diffID: %w", err)
		}
		info, err := c.stat(l.Digest)
		if errors.Is(err, ErrNotFound) {
			return StepRecord{}, fmt.Errorf("%w: layer %s is not committed", ErrFailedPrecondition, l.Digest)
		} else if err != nil {
			return StepRecord{}, err
		}
		if l.Size == 0 {
			l.Size = info.Size
		} else if l.Size != info.Size {
			return StepRecord{}, fmt.Errorf("%w: layer %s has %d bytes, not %d", ErrInvalidArgument, l.Digest, info.Size, l.Size)
		}
		if l.MediaType == "" {
			l.MediaType = info.MediaType
		}
		rec.Layer = &l
		diffID, layerDigest = l.DiffID, l.Digest
	}
	rec.Next = stepkey.Next(parent, key, diffID)
	b, err := rec.marshal()
	if err != nil {
		return StepRecord{}, err
	}
	sk := rec.storeKey()
	defer c.stepLocks.lock(sk).Unlock()
	// The record there, if any, decides: the same layer is this record
	// already; another is a divergence.
	var old StepRecord
	var found bool
	err = c.idx.View("read step", func(tx *index.Tx) error {
		var decodeErr error
		found, err = tx.StepValue(sk, func(v []byte) error {
			old, decodeErr = unmarshalStep(v)
			return decodeErr
		})
		if decodeErr != nil {
			return fmt.Errorf("%w: step %s: %w", ErrDataLoss, key, decodeErr)
		}
		if err != nil || !found {
			return err
		}
		h, err := tx.Hits(sk)
		old.Hits, old.LastHit = h.N, h.Last
		return err
	})
	if err != nil {
		return StepRecord{}, err
	}
	if found {
		var oldLayer digest.Digest
		if old.Layer != nil {
			oldLayer = old.Layer.Digest
		}
		if oldLayer == layerDigest {
			return old, nil
		}
		d, err := c.idx.Diverged(sk, time.Now().UTC())
		if err != nil {
			return StepRecord{}, err
		}
		c.divergences.Add(1)
		c.steps.forget(sk) // lookups show the count
		c.log.Warn("cache: step record refused: the namespace holds another layer for this step", "namespace", ns, "key", key,
			"recorded layer", oldLayer, "refused layer", layerDigest, "divergences", d.N)
		return StepRecord{}, fmt.Errorf("%w: step %s in namespace %q names layer %s, not %s (%d divergences)",
			ErrStepDiverged, key, ns, describeLayer(oldLayer), describeLayer(layerDigest), d.N)
	}
	if c.stepWrite != nil {
		c.stepWrite()
	}
	if err := c.store.Put(ctx, stepObjectKey(sk), bytes.NewReader(b), int64(len(b))); err != nil {
		return StepRecord{}, backendErr("write step record", err)
	}
	h, err := c.idx.PutStep(sk, b, layerDigest)
	c.steps.forget(sk) // after the write: see stepMemo
	if err != nil {
		return StepRecord{}, err
	}
	rec.Hits, rec.LastHit = h.N, h.Last
	return rec, nil
}

func describeLayer(d digest.Digest) string {
	if d == "" {
		return "no layer"
	}
	return string(d)
}

// LookupStep is LookupStepIn the default namespace.
func (c *Cache) LookupStep(ctx context.Context, parent digest.Digest, s stepkey.Step) (StepRecord, error) {
	return c.LookupStepIn(ctx, nil, parent, s)
}

// LookupStepIn returns the record of step s on top of parent in the first
// of namespaces that holds one (none: the default namespace). A miss is
// ErrNotFound, with the step's key in the record returned (so that a
// caller can show or reuse it without deriving it again); so is a record
// whose layer has been deleted. A record looked up before, whose layer no
// delete can have touched since, is answered from memory (see stepMemo).
func (c *Cache) LookupStepIn(ctx context.Context, namespaces []string, parent digest.Digest, s stepkey.Step) (StepRecord, error) {
	if err := c.begin(ctx); err != nil {
		return StepRecord{}, fmt.Errorf("cache: lookup step: %w", err)
	}
	defer c.end()
	nss, err := validNamespaces(namespaces)
	if err != nil {
		return StepRecord{}, fmt.Errorf("cache: lookup step: %w", err)
	}
	key, _, err := stepKey(parent, s)
	if err != nil {
		return StepRecord{}, fmt.Errorf("cache: lookup step: %w", err)
	}
	for i, ns := range nss {
		sk := stepStoreKey(ns, key)
		if i == 0 { // see LookupChainIn
			if rec, ok := c.memoHit(sk); ok {
				return rec, nil
			}
		}
		seq, gen, keep := c.memoStart()
		var rec StepRecord
		err = c.idx.View("lookup step", func(tx *index.Tx) (err error) {
			rec, err = c.getStep(tx, sk)
			return err
		})
		if errors.Is(err, ErrNotFound) {
			continue
		} else if err != nil {
			return StepRecord{Key: key}, fmt.Errorf("cache: lookup step: %w", err)
		}
		c.hit(&rec)
		if keep {
			c.steps.put(sk, rec, seq, gen)
		}
		return rec, nil
	}
	return StepRecord{Key: key}, fmt.Errorf("cache: lookup step: step %s: %w", key, ErrNotFound)
}

// LookupChain is LookupChainIn the default namespace.
func (c *Cache) LookupChain(ctx context.Context, base digest.Digest, steps []stepkey.Step) ([]StepRecord, error) {
	return c.LookupChainIn(ctx, nil, base, steps)
}

// LookupChainIn walks steps from base: each step's parent is the Next of
// the record before it, found in the first of namespaces that holds one
// (none: the default namespace). It returns the records of the longest
// prefix that is cached (none: an empty slice). Every step is normalized
// before any index read; steps answered from memory need none, the rest
// are read in one index transaction.
func (c *Cache) LookupChainIn(ctx context.Context, namespaces []string, base digest.Digest, steps []stepkey.Step) ([]StepRecord, error) {
	if err := c.begin(ctx); err != nil {
		return nil, fmt.Errorf("cache: lookup chain: %w", err)
	}
	defer c.end()
	if len(steps) > MaxChainSteps {
		return nil, fmt.Errorf("cache: lookup chain: %w: %d steps, at most %d", ErrInvalidArgument, len(steps), MaxChainSteps)
	}
	nss, err := validNamespaces(namespaces)
	if err != nil {
		return nil, fmt.Errorf("cache: lookup chain: %w", err)
	}
	normal := make([]stepkey.Step, len(steps))
	for i, s := range steps {
		n, err := s.Normalized()
		if err != nil {
			return nil, fmt.Errorf("cache: lookup chain: step %d: %w: %w", i, ErrInvalidArgument, err)
		}
		normal[i] = n
	}
	var out []StepRecord
	parent := base
	// From memory while it answers: only the first namespace's record can
	// be taken from it (one a later namespace holds may be shadowed by a
	// record of an earlier one that only the index has).
	for len(out) < len(normal) {
		key, err := stepkey.NormalizedKey(parent, normal[len(out)])
		if err != nil {
			return nil, fmt.Errorf("cache: lookup chain: step %d: %w: %w", len(out), ErrInvalidArgument, err)
		}
		rec, ok := c.memoHit(stepStoreKey(nss[0], key))
		if !ok {
			break
		}
		out = append(out, rec)
		parent = rec.Next
	}
	if len(out) == len(normal) {
		return out, nil
	}
	seq, gen, keep := c.memoStart()
	var read []StepRecord
	err = c.idx.View("lookup chain", func(tx *index.Tx) error {
		read = read[:0]
		parent := parent
	steps:
		for i := len(out); i < len(normal); i++ {
			key, err := stepkey.NormalizedKey(parent, normal[i])
			if err != nil {
				return fmt.Errorf("step %d: %w: %w", i, ErrInvalidArgument, err)
			}
			for _, ns := range nss {
				rec, err := c.getStep(tx, stepStoreKey(ns, key))
				if errors.Is(err, ErrNotFound) {
					continue
				} else if err != nil {
					return err
				}
				read = append(read, rec)
				parent = rec.Next
				continue steps
			}
			return nil // a miss in every namespace ends the chain
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cache: lookup chain: %w", err)
	}
	for i := range read {
		c.hit(&read[i])
		if keep {
			c.steps.put(read[i].storeKey(), read[i], seq, gen)
		}
	}
	return append(out, read...), nil
}

// getStep reads step key's record, decoded (from the memo when it has been
// decoded before: records never change in place), with its stored hits. A
// record whose layer is gone is ErrNotFound.
func (c *Cache) getStep(tx *index.Tx, key digest.Digest) (StepRecord, error) {
	rec, ok := c.steps.decoded(key)
	var found bool
	var err error
	if ok {
		found, err = tx.StepValue(key, func([]byte) error { return nil })
	} else {
		var decodeErr error
		found, err = tx.StepValue(key, func(v []byte) error {
			rec, decodeErr = unmarshalStep(v)
			return decodeErr
		})
		if decodeErr != nil {
			return StepRecord{}, fmt.Errorf("%w: step %s: %w", ErrDataLoss, key, decodeErr)
		}
	}
	if err != nil {
		return StepRecord{}, err
	}
	if !found {
		return StepRecord{}, fmt.Errorf("step %s: %w", key, ErrNotFound)
	}
	if rec.Layer != nil {
		if ok, err := tx.HasLayer(rec.Layer.Digest); err != nil {
			return StepRecord{}, err
		} else if !ok {
			return StepRecord{}, fmt.Errorf("step %s: layer %s is gone: %w", key, rec.Layer.Digest, ErrNotFound)
		}
	}
	h, err := tx.Hits(key)
	if err != nil {
		return StepRecord{}, err
	}
	rec.Hits, rec.LastHit = h.N, h.Last
	d, err := tx.Divergences(key)
	if err != nil {
		return StepRecord{}, err
	}
	rec.Divergences, rec.LastDivergence = d.N, d.Last
	return rec, nil
}

// hit counts a hit on rec, lazily persisted, and adds the pending hits to
// what rec says.
func (c *Cache) hit(rec *StepRecord) {
	now := time.Now().UTC()
	p := c.idx.Hit(rec.storeKey(), now)
	rec.Hits += p.N
	rec.LastHit = now
}

// memoStart is taken before a lookup reads the index: what the memo needs
// to keep what the lookup reads. keep is false while a delete is under way.
func (c *Cache) memoStart() (seq, gen uint64, keep bool) {
	keep = c.deleting.Load() == 0
	return c.layerSeq.Load(), c.steps.generation(), keep
}

// memoHit answers a lookup of key from memory, counting the hit, if the
// memo holds its record and no layer delete has begun since the record's
// layer was last seen in the index.
func (c *Cache) memoHit(key digest.Digest) (StepRecord, bool) {
	if c.deleting.Load() > 0 {
		return StepRecord{}, false
	}
	seq := c.layerSeq.Load()
	now := time.Now().UTC()
	rec, ok := c.steps.hit(key, seq, now)
	if ok {
		c.idx.Hit(key, now) // for the index; the memo counted it already
	}
	return rec, ok
}

// stepMemo keeps decoded step records, so that a repeated lookup reads
// nothing from the index: decoding the stored JSON was a quarter of a
// lookup's CPU, and each Badger read transaction takes a lock that 64
// concurrent lookups queue on. A record never changes once written
// (RecordStep of the same key forgets it after writing; Reindex forgets
// all), but its layer can be deleted: an entry remembers the value of
// Cache.layerSeq when its layer was last seen in the index, and answers
// alone only while no delete runs and layerSeq still has that value
// (Delete counts itself in deleting and bumps layerSeq before its index
// commit and after it, and lookups keep nothing they read during a
// delete). An entry's Hits is the total
// (stored and pending) as of its last hit. A lookup puts what it read only
// if nothing was forgotten since it started (gen), so a record read just
// before a RecordStep replaced it is never kept. The memo holds at most
// stepMemoBytes of records and drops arbitrary ones when full. Records are
// shared: callers get copies of the struct, and its slices (Config,
// BuildArgs) are never written.
type stepMemo struct {
	mu    sync.Mutex
	m     map[digest.Digest]*memoEntry
	bytes int
	gen   uint64 // counts forgets
}

type memoEntry struct {
	rec      StepRecord
	verified uint64 // Cache.layerSeq when the layer was last seen
	size     int
}

// stepMemoBytes bounds the memo: 32 MiB is about 50 000 records of
// ordinary size, and 500 of the largest (64 KiB configs).
const stepMemoBytes = 32 << 20

func newStepMemo() stepMemo { return stepMemo{m: make(map[digest.Digest]*memoEntry)} }

func (m *stepMemo) generation() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.gen
}

// decoded returns key's record, however old its verification.
func (m *stepMemo) decoded(key digest.Digest) (StepRecord, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.m[key]; ok {
		return e.rec, true
	}
	return StepRecord{}, false
}

// hit returns key's record with one more hit at now, if its layer was seen
// at layerSeq seq.
func (m *stepMemo) hit(key digest.Digest, seq uint64, now time.Time) (StepRecord, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.m[key]
	if !ok || e.verified != seq {
		return StepRecord{}, false
	}
	e.rec.Hits++
	e.rec.LastHit = now
	return e.rec, true
}

// put keeps r, read from the index at layerSeq seq and memo generation
// gen (both taken before the read, see memoStart).
func (m *stepMemo) put(key digest.Digest, r StepRecord, seq, gen uint64) {
	size := 512 + len(r.Config) + len(r.Step.Instruction) + len(r.Step.Platform)
	for _, a := range r.Step.BuildArgs {
		size += 16 + len(a)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if gen != m.gen || size > stepMemoBytes/16 {
		return
	}
	if old, ok := m.m[key]; ok {
		// Two lookups that read the index at once put in either order:
		// keep the higher hit count, which counts the hits in between.
		r.Hits = max(r.Hits, old.rec.Hits)
		delete(m.m, key)
		m.bytes -= old.size
	}
	for k, e := range m.m {
		if m.bytes+size <= stepMemoBytes {
			break
		}
		delete(m.m, k)
		m.bytes -= e.size
	}
	m.m[key] = &memoEntry{rec: r, verified: seq, size: size}
	m.bytes += size
}

func (m *stepMemo) forget(key digest.Digest) {
	m.mu.Lock()
	if e, ok := m.m[key]; ok {
		delete(m.m, key)
		m.bytes -= e.size
	}
	m.gen++
	m.mu.Unlock()
}

func (m *stepMemo) clear() {
	m.mu.Lock()
	clear(m.m)
	m.bytes = 0
	m.gen++
	m.mu.Unlock()
}
