package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cairnbuild/cairn/stepkey"
	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// MaxConfigSize bounds a step record's config fragment.
const MaxConfigSize = 64 << 10

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
	Key     digest.Digest // stepkey.Key(Parent, Step)
	Parent  digest.Digest // chain ID below the step; "" is scratch
	Step    stepkey.Step  // normalized
	Layer   *LayerRef     // nil: the step makes no layer
	Config  []byte        // opaque config fragment, at most MaxConfigSize
	Created time.Time
	Hits    uint64        // lookups that returned the record (lazily persisted)
	LastHit time.Time     // zero if never hit
	Next    digest.Digest // stepkey.Next(Parent, Key, DiffID): the parent of the following step
}

// stepJSON is a step record's stored form, in the index (k/<key>) and the
// backend (steps/<hex>). Hits live apart, in h/<key>, so the record itself
// never changes once written.
type stepJSON struct {
	Version      int           `json:"version"`
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
	j := stepJSON{Version: stepVersion, Key: r.Key, Parent: r.Parent, Instruction: r.Step.Instruction,
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
	r := StepRecord{Key: j.Key, Parent: j.Parent, Step: stepkey.Step{Instruction: j.Instruction,
		InputsDigest: j.InputsDigest, Platform: j.Platform, BuildArgs: j.BuildArgs},
		Config: j.Config, Created: j.Created.UTC(), Next: j.Next}
	if j.Layer != nil {
		r.Layer = &LayerRef{Digest: j.Layer.Digest, DiffID: j.Layer.DiffID, Size: j.Layer.Size, MediaType: j.Layer.MediaType}
	}
	return r, nil
}

// stepKey validates the inputs of a step operation and derives its key.
func stepKey(parent digest.Digest, s stepkey.Step) (digest.Digest, stepkey.Step, error) {
	n, err := s.Normalized()
	if err != nil {
		return "", stepkey.Step{}, fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	key, err := stepkey.Key(parent, n)
	if err != nil {
		return "", stepkey.Step{}, fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	return key, n, nil
}

// RecordStep records that step s on top of parent produced layer (nil: no
// layer) and config. The layer must be committed (else
// ErrFailedPrecondition); its DiffID defaults to its digest, and its size
// and media type, if given, must match the committed layer. Recording a
// step again replaces its result and keeps its hit count.
func (c *Cache) RecordStep(ctx context.Context, parent digest.Digest, s stepkey.Step, layer *LayerRef, config []byte) (StepRecord, error) {
	if err := c.begin(ctx); err != nil {
		return StepRecord{}, fmt.Errorf("cache: record step: %w", err)
	}
	defer c.end()
	rec, err := c.recordStep(ctx, parent, s, layer, config)
	if err != nil {
		return StepRecord{}, fmt.Errorf("cache: record step: %w", err)
	}
	return rec, nil
}

func (c *Cache) recordStep(ctx context.Context, parent digest.Digest, s stepkey.Step, layer *LayerRef, config []byte) (StepRecord, error) {
	key, n, err := stepKey(parent, s)
	if err != nil {
		return StepRecord{}, err
	}
	if len(config) > MaxConfigSize {
		return StepRecord{}, fmt.Errorf("%w: config of %d bytes, at most %d", ErrInvalidArgument, len(config), MaxConfigSize)
	}
	rec := StepRecord{Key: key, Parent: parent, Step: n, Created: time.Now().UTC()}
	if len(config) > 0 {
		rec.Config = bytes.Clone(config)
	}
	var diffID digest.Digest
	if layer != nil {
		l := *layer
		if err := parseLayerDigest(l.Digest); err != nil {
			return StepRecord{}, err
		}
		if l.DiffID == "" {
			l.DiffID = l.Digest
		} else if err := parseLayerDigest(l.DiffID); err != nil {
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
		diffID = l.DiffID
	}
	rec.Next = stepkey.Next(parent, key, diffID)
	b, err := rec.marshal()
	if err != nil {
		return StepRecord{}, err
	}
	// Backend first: Reindex finds the record there.
	if err := c.store.Put(ctx, stepObjectKey(key), bytes.NewReader(b), int64(len(b))); err != nil {
		return StepRecord{}, backendErr("write step record", err)
	}
	err = c.update("index step "+string(key), func(txn *badger.Txn) error {
		if rec.Layer != nil {
			if _, err := txn.Get(layerIdxKey(rec.Layer.Digest)); errors.Is(err, badger.ErrKeyNotFound) {
				return fmt.Errorf("%w: layer %s was deleted meanwhile", ErrFailedPrecondition, rec.Layer.Digest)
			} else if err != nil {
				return err
			}
		}
		h, err := getHits(txn, key)
		if err != nil {
			return err
		}
		rec.Hits, rec.LastHit = h.n, h.last
		return txn.Set(stepIdxKey(key), b)
	})
	if err != nil {
		return StepRecord{}, err
	}
	return rec, nil
}

// LookupStep returns the record of step s on top of parent and counts the
// hit. A step never recorded, or whose layer has since been deleted, is
// ErrNotFound.
func (c *Cache) LookupStep(ctx context.Context, parent digest.Digest, s stepkey.Step) (StepRecord, error) {
	if err := c.begin(ctx); err != nil {
		return StepRecord{}, fmt.Errorf("cache: lookup step: %w", err)
	}
	defer c.end()
	key, _, err := stepKey(parent, s)
	if err != nil {
		return StepRecord{}, fmt.Errorf("cache: lookup step: %w", err)
	}
	var rec StepRecord
	err = c.db.View(func(txn *badger.Txn) (err error) {
		rec, err = getStep(txn, key)
		return err
	})
	if err != nil {
		return StepRecord{}, indexErr("cache: lookup step", err)
	}
	c.hit(&rec)
	return rec, nil
}

// LookupChain walks steps from base, each on top of the previous hit's
// Next, and returns the records of the longest prefix that is cached: one
// record per hit, so len(result) is the number of steps a builder can skip.
// Each hit is counted. A malformed step fails the call only if the walk
// reaches it.
func (c *Cache) LookupChain(ctx context.Context, base digest.Digest, steps []stepkey.Step) ([]StepRecord, error) {
	if err := c.begin(ctx); err != nil {
		return nil, fmt.Errorf("cache: lookup chain: %w", err)
	}
	defer c.end()
	if len(steps) > MaxChainSteps {
		return nil, fmt.Errorf("cache: lookup chain: %w: %d steps, at most %d", ErrInvalidArgument, len(steps), MaxChainSteps)
	}
	var out []StepRecord
	err := c.db.View(func(txn *badger.Txn) error {
		parent := base
		for i, s := range steps {
			key, _, err := stepKey(parent, s)
			if err != nil {
				return fmt.Errorf("step %d: %w", i, err)
			}
			rec, err := getStep(txn, key)
			if errors.Is(err, ErrNotFound) {
				return nil
			} else if err != nil {
				return err
			}
			out = append(out, rec)
			parent = rec.Next
		}
		return nil
	})
	if err != nil {
		return nil, indexErr("cache: lookup chain", err)
	}
	for i := range out {
		c.hit(&out[i])
	}
	return out, nil
}

// getStep reads k/<key> with its hit count. A step whose layer is gone is
// ErrNotFound: a hit never names a layer that cannot be served.
func getStep(txn *badger.Txn, key digest.Digest) (StepRecord, error) {
	item, err := txn.Get(stepIdxKey(key))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return StepRecord{}, fmt.Errorf("step %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return StepRecord{}, err
	}
	var rec StepRecord
	if err := item.Value(func(v []byte) (err error) {
		rec, err = unmarshalStep(v)
		return err
	}); err != nil {
		return StepRecord{}, fmt.Errorf("%w: step %s: %w", ErrDataLoss, key, err)
	}
	if rec.Layer != nil {
		if _, err := txn.Get(layerIdxKey(rec.Layer.Digest)); errors.Is(err, badger.ErrKeyNotFound) {
			return StepRecord{}, fmt.Errorf("step %s: layer %s is gone: %w", key, rec.Layer.Digest, ErrNotFound)
		} else if err != nil {
			return StepRecord{}, err
		}
	}
	h, err := getHits(txn, key)
	if err != nil {
		return StepRecord{}, err
	}
	rec.Hits, rec.LastHit = h.n, h.last
	return rec, nil
}

// hit counts a lookup that returned rec; the flusher persists the count.
func (c *Cache) hit(rec *StepRecord) {
	now := time.Now().UTC()
	c.pendMu.Lock()
	p := c.pendHits[rec.Key]
	p.n++
	p.last = now
	c.pendHits[rec.Key] = p
	c.pendMu.Unlock()
	rec.Hits += p.n
	rec.LastHit = now
}
