package stepkey_test

import (
	"fmt"

	"github.com/cairnbuild/cairn/stepkey"
	"github.com/opencontainers/go-digest"
)

// A builder walks a Dockerfile: each step's key depends on the chain below
// it, and Next gives the parent of the following step.
func Example() {
	base := digest.FromString("base layer") // diffID of the base image's only layer
	steps := []struct {
		step   stepkey.Step
		diffID digest.Digest // what running the step produced; "" for metadata-only steps
	}{
		{stepkey.Step{Instruction: "env  DEBIAN_FRONTEND=noninteractive", Platform: "linux/amd64"}, ""},
		{stepkey.Step{Instruction: "RUN apt-get update && \\\n    apt-get install -y git", Platform: "linux/amd64"}, digest.FromString("apt layer")},
		{stepkey.Step{Instruction: "COPY . /src", InputsDigest: digest.FromString("context"), Platform: "linux/amd64"}, digest.FromString("src layer")},
	}
	parent := stepkey.ChainID("", base)
	for _, s := range steps {
		key, err := stepkey.Key(parent, s.step)
		if err != nil {
			fmt.Println(err)
			return
		}
		n, _ := stepkey.Normalize(s.step.Instruction)
		fmt.Printf("%-50q %s\n", n, key.Encoded()[:12])
		parent = stepkey.Next(parent, key, s.diffID)
	}
	_, err := stepkey.Key(parent, stepkey.Step{Instruction: "COPY . /src"})
	fmt.Println(err)
	// Output:
	// "ENV DEBIAN_FRONTEND=noninteractive"               a95c23e8d238
	// "RUN apt-get update && apt-get install -y git"     ad0cf7795ce9
	// "COPY . /src"                                      b34008d46c03
	// stepkey: invalid step: COPY needs an inputs digest (the digest of the copied content)
}
