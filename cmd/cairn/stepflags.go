package main

import (
	"fmt"
	"unicode/utf8"

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

// addNamespaceFlag registers --namespace, the step namespace a command
// writes to (or deletes from), with its twin CAIRN_NAMESPACE.
func addNamespaceFlag(cmd *cobra.Command, what string) *string {
	ns := new(string)
	cmd.Flags().StringVar(ns, "namespace", "", "the step namespace to "+what+", e.g. main or pr/1234 (empty: the default namespace)")
	return ns
}

// addNamespacesFlag registers --namespaces, the step namespaces a lookup
// searches in order, with its twin CAIRN_NAMESPACES.
func addNamespacesFlag(cmd *cobra.Command) *[]string {
	nss := new([]string)
	cmd.Flags().StringSliceVar(nss, "namespaces", nil, "step namespaces to search, in order, comma-separated, e.g. pr/1234,main (empty: the default namespace)")
	return nss
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
	if err := checkUTF8("--instruction", f.instruction); err != nil {
		return client.Step{}, err
	}
	if err := checkUTF8("--platform", f.platform); err != nil {
		return client.Step{}, err
	}
	for _, b := range f.buildArgs {
		if err := checkUTF8("--build-arg", b); err != nil {
			return client.Step{}, err
		}
	}
	return client.Step{
		Instruction:  f.instruction,
		InputsDigest: inputs,
		Platform:     f.platform,
		BuildArgs:    f.buildArgs,
	}, nil
}

// checkUTF8 refuses a value that is not valid UTF-8, naming what it came
// from (a flag, a line of a file): the strings of the API's messages must
// be, and gRPC would otherwise fail with a marshaling error that names
// nothing the user gave.
func checkUTF8(what, v string) error {
	if utf8.ValidString(v) {
		return nil
	}
	i := 0
	for i < len(v) {
		r, size := utf8.DecodeRuneInString(v[i:])
		if r == utf8.RuneError && size <= 1 {
			break
		}
		i += size
	}
	return fmt.Errorf("%s %q is not valid UTF-8 (byte %#02x at offset %d)", what, v, v[i], i)
}
