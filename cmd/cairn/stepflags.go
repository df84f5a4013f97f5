package main

import (
	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/client"
)

// stepFlags are the flags that name a build step: where it runs (--parent)
// and what it is (--instruction, --inputs, --platform, --build-arg).
type stepFlags struct {
	parent      string
	instruction string
	inputs      string
	platform    string
	buildArgs   []string
}

// addStepFlags registers the step flags on cmd. A builder can set
// --platform once, with its twin CAIRN_PLATFORM.
func addStepFlags(cmd *cobra.Command) *stepFlags {
	f := &stepFlags{}
	fs := cmd.Flags()
	fs.StringVar(&f.parent, "parent", "", "chain ID the step runs on (the previous step's \"next\"; empty: scratch)")
	fs.StringVar(&f.instruction, "instruction", "", "the Dockerfile instruction, e.g. 'RUN apt-get update'")
	fs.StringVar(&f.inputs, "inputs", "", "for COPY/ADD: digest of the copied files' content and metadata")
	fs.StringVar(&f.platform, "platform", "", "platform the step runs for, e.g. linux/amd64")
	fs.StringArrayVar(&f.buildArgs, "build-arg", nil, "a KEY=VALUE build arg the step sees (repeatable)")
	return f
}

// parentDigest returns the validated --parent ("" for scratch).
func (f *stepFlags) parentDigest() (digest.Digest, error) {
	return parseOptionalDigest("--parent", f.parent)
}

// step returns the step the flags describe.
func (f *stepFlags) step() (client.Step, error) {
	inputs, err := parseOptionalDigest("--inputs", f.inputs)
	if err != nil {
		return client.Step{}, err
	}
	return client.Step{
		Instruction:  f.instruction,
		InputsDigest: inputs,
		Platform:     f.platform,
		BuildArgs:    f.buildArgs,
	}, nil
}
