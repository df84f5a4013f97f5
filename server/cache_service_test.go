package server

import (
	"bytes"
	"context"
	"testing"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
	"github.com/cairnbuild/cairn/stepkey"
)

func TestSteps(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	base := digest.FromString("base image chain").String()
	run := &cairnv1.Step{Instruction: "run   apt-get update", Platform: "linux/amd64"}
	env := &cairnv1.Step{Instruction: "ENV A=1", Platform: "linux/amd64"}
	copyStep := &cairnv1.Step{Instruction: "COPY . /src", InputsDigest: digest.FromString("context").String(), Platform: "linux/amd64"}

	// A miss is an answer, not an error, and still names the key.
	miss, err := e.steps.LookupStep(ctx, &cairnv1.LookupStepRequest{Parent: base, Step: run})
	if err != nil {
		t.Fatalf("LookupStep miss: %v", err)
	}
	wantKey, err := stepkey.Key(digest.Digest(base), stepkey.Step{Instruction: "RUN apt-get update", Platform: "linux/amd64"})
	if err != nil {
		t.Fatal(err)
	}
	if miss.GetHit() || miss.GetRecord() != nil || miss.GetKey() != wantKey.String() {
		t.Fatalf("miss: got %v, want hit=false, key %s", miss, wantKey)
	}

	// A step's layer must be committed first.
	layerData := randomData(42, 50<<10)
	ld := digest.FromBytes(layerData).String()
	_, err = e.steps.RecordStep(ctx, &cairnv1.RecordStepRequest{Parent: base, Step: run, Layer: &cairnv1.LayerDescriptor{Digest: ld}})
	wantStatus(t, err, codes.FailedPrecondition, cairnv1.ReasonFailedPrecondition, "")
	e.pushSimple(t, layerData)

	rec, err := e.steps.RecordStep(ctx, &cairnv1.RecordStepRequest{Parent: base, Step: run,
		Layer: &cairnv1.LayerDescriptor{Digest: ld}, Config: []byte(`{"Env":["X=1"]}`)})
	if err != nil {
		t.Fatalf("RecordStep: %v", err)
	}
	r := rec.GetRecord()
	if r.GetKey() != wantKey.String() || r.GetStep().GetInstruction() != "RUN apt-get update" ||
		r.GetLayer().GetDiffId() != ld || r.GetLayer().GetSizeBytes() != int64(len(layerData)) || r.GetCreateTime() == nil {
		t.Fatalf("recorded %v", r)
	}
	if want := stepkey.ChainID(digest.Digest(base), digest.Digest(ld)).String(); r.GetNextParent() != want {
		t.Errorf("next_parent %s, want the chain ID %s", r.GetNextParent(), want)
	}
	// Metadata-only step on top.
	rec2, err := e.steps.RecordStep(ctx, &cairnv1.RecordStepRequest{Parent: r.GetNextParent(), Step: env})
	if err != nil {
		t.Fatalf("RecordStep without layer: %v", err)
	}
	if rec2.GetRecord().GetLayer() != nil {
		t.Errorf("metadata-only step has a layer: %v", rec2.GetRecord().GetLayer())
	}

	hit, err := e.steps.LookupStep(ctx, &cairnv1.LookupStepRequest{Parent: base, Step: run})
	if err != nil || !hit.GetHit() || hit.GetRecord().GetKey() != wantKey.String() || !bytes.Equal(hit.GetRecord().GetConfig(), []byte(`{"Env":["X=1"]}`)) {
		t.Fatalf("LookupStep hit: %v, %v", hit, err)
	}

	chain, err := e.steps.LookupChain(ctx, &cairnv1.LookupChainRequest{Base: base, Steps: []*cairnv1.Step{run, env, copyStep, run}})
	if err != nil {
		t.Fatalf("LookupChain: %v", err)
	}
	if len(chain.GetHits()) != 2 || chain.GetHits()[1].GetKey() != rec2.GetRecord().GetKey() {
		t.Fatalf("LookupChain: %d hits, want the 2 recorded", len(chain.GetHits()))
	}
	if chain.GetNextParent() != rec2.GetRecord().GetNextParent() {
		t.Errorf("next_parent %s, want the last hit's %s", chain.GetNextParent(), rec2.GetRecord().GetNextParent())
	}
	none, err := e.steps.LookupChain(ctx, &cairnv1.LookupChainRequest{Base: base, Steps: []*cairnv1.Step{copyStep}})
	if err != nil || len(none.GetHits()) != 0 || none.GetNextParent() != base {
		t.Fatalf("LookupChain all-miss: %v, %v; want no hits and next_parent = base", none, err)
	}
	empty, err := e.steps.LookupChain(ctx, &cairnv1.LookupChainRequest{})
	if err != nil || len(empty.GetHits()) != 0 || empty.GetNextParent() != "" {
		t.Fatalf("LookupChain of nothing on scratch: %v, %v", empty, err)
	}

	// Deleting the layer turns the hit into a miss.
	if _, err := e.layers.DeleteLayer(ctx, &cairnv1.DeleteLayerRequest{Digest: ld}); err != nil {
		t.Fatal(err)
	}
	gone, err := e.steps.LookupStep(ctx, &cairnv1.LookupStepRequest{Parent: base, Step: run})
	if err != nil || gone.GetHit() {
		t.Fatalf("lookup after the layer was deleted: %v, %v; want a miss", gone, err)
	}
}

func TestStepBadInput(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	good := &cairnv1.Step{Instruction: "RUN true"}
	tests := []struct {
		name   string
		req    *cairnv1.LookupStepRequest
		reason string
		field  string
	}{
		{"no step", &cairnv1.LookupStepRequest{}, cairnv1.ReasonInvalidArgument, "step"},
		{"bad parent", &cairnv1.LookupStepRequest{Parent: "sha256:123", Step: good}, cairnv1.ReasonInvalidDigest, "parent"},
		{"bad inputs digest", &cairnv1.LookupStepRequest{Step: &cairnv1.Step{Instruction: "COPY a b", InputsDigest: "crc32:1"}}, cairnv1.ReasonInvalidDigest, "step.inputs_digest"},
		{"unknown keyword", &cairnv1.LookupStepRequest{Step: &cairnv1.Step{Instruction: "FROBNICATE x"}}, cairnv1.ReasonInvalidArgument, ""},
		{"copy without inputs", &cairnv1.LookupStepRequest{Step: &cairnv1.Step{Instruction: "COPY a b"}}, cairnv1.ReasonInvalidArgument, ""},
		{"empty instruction", &cairnv1.LookupStepRequest{Step: &cairnv1.Step{}}, cairnv1.ReasonInvalidArgument, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.steps.LookupStep(ctx, tt.req)
			wantStatus(t, err, codes.InvalidArgument, tt.reason, tt.field)
		})
	}

	_, err := e.steps.LookupChain(ctx, &cairnv1.LookupChainRequest{Steps: []*cairnv1.Step{good, {Instruction: "RUN x", InputsDigest: "nope"}}})
	wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidDigest, "steps[1].inputs_digest")
	many := make([]*cairnv1.Step, cairnv1.MaxChainSteps+1)
	for i := range many {
		many[i] = good
	}
	_, err = e.steps.LookupChain(ctx, &cairnv1.LookupChainRequest{Steps: many})
	wantStatus(t, err, codes.ResourceExhausted, cairnv1.ReasonResourceExhausted, "steps")
	_, err = e.steps.RecordStep(ctx, &cairnv1.RecordStepRequest{Step: good, Config: make([]byte, 64<<10+1)})
	wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidArgument, "config")
	_, err = e.steps.RecordStep(ctx, &cairnv1.RecordStepRequest{Step: good, Layer: &cairnv1.LayerDescriptor{}})
	wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidDigest, "layer.digest")
}

// Namespaces over the API: a pull request's record is no hit for main; a
// second record with another layer is STEP_DIVERGED and counted; bad
// namespaces are INVALID_ARGUMENT.
func TestStepNamespaces(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	run := &cairnv1.Step{Instruction: "RUN make"}
	a, b := randomData(61, 20<<10), randomData(62, 20<<10)
	e.pushSimple(t, a)
	e.pushSimple(t, b)
	la := &cairnv1.LayerDescriptor{Digest: digest.FromBytes(a).String()}
	lb := &cairnv1.LayerDescriptor{Digest: digest.FromBytes(b).String()}
	if _, err := e.steps.RecordStep(ctx, &cairnv1.RecordStepRequest{Step: run, Layer: la, Namespace: "pr/7"}); err != nil {
		t.Fatal(err)
	}
	if r, err := e.steps.LookupStep(ctx, &cairnv1.LookupStepRequest{Step: run, Namespaces: []string{"main"}}); err != nil || r.GetHit() {
		t.Fatalf("main's lookup: %v, %v; want a miss", r, err)
	}
	r, err := e.steps.LookupStep(ctx, &cairnv1.LookupStepRequest{Step: run, Namespaces: []string{"pr/7", "main"}})
	if err != nil || !r.GetHit() || r.GetRecord().GetNamespace() != "pr/7" {
		t.Fatalf("the pull request's lookup: %v, %v", r, err)
	}
	_, err = e.steps.RecordStep(ctx, &cairnv1.RecordStepRequest{Step: run, Layer: lb, Namespace: "pr/7"})
	wantStatus(t, err, codes.FailedPrecondition, cairnv1.ReasonStepDiverged, "")
	r, err = e.steps.LookupStep(ctx, &cairnv1.LookupStepRequest{Step: run, Namespaces: []string{"pr/7"}})
	if err != nil || r.GetRecord().GetLayer().GetDigest() != la.GetDigest() || r.GetRecord().GetDivergenceCount() != 1 {
		t.Fatalf("after the divergence: %v, %v", r, err)
	}
	_, err = e.steps.LookupStep(ctx, &cairnv1.LookupStepRequest{Step: run, Namespaces: []string{"Main"}})
	wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidArgument, "")
	_, err = e.steps.RecordStep(ctx, &cairnv1.RecordStepRequest{Step: run, Layer: la, Namespace: "../x"})
	wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidArgument, "")
	if _, err := e.steps.DeleteStep(ctx, &cairnv1.DeleteStepRequest{Key: r.GetKey(), Namespace: "pr/7"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.steps.RecordStep(ctx, &cairnv1.RecordStepRequest{Step: run, Layer: lb, Namespace: "pr/7"}); err != nil {
		t.Fatalf("recording after a delete: %v", err)
	}
}
