package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/client"
	"github.com/cairnbuild/cairn/cmd/internal/sizeflag"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// chainOutput is `lookup --chain`'s --json result.
type chainOutput struct {
	Steps int `json:"steps"` // steps in the chain file
	Hits  int `json:"hits"`  // the cached prefix's length
	// Next is the parent for the first step that missed (or for the step
	// after the chain when all hit).
	Next    digest.Digest       `json:"next"`
	Records []client.StepRecord `json:"records"`
}

func newLookupCmd(a *app) *cobra.Command {
	var chain string
	cmd := &cobra.Command{
		Use:   "lookup --instruction I [--parent P] | lookup --chain FILE [--parent P]",
		Short: "Ask whether a build step, or a chain of them, is cached",
		Long: `Lookup asks the server whether a build step ran before on the same parent,
with the same inputs, platform and build args. On a hit it prints the
step's record: its layer, and "next", the --parent for the following
step. On a miss it exits with status 2.

With --chain FILE (or - for stdin) it looks up a whole chain in one round
trip: one instruction per line, the first on --parent. Blank lines and
lines starting with # are skipped. Before the instruction, a line may set
that step's --inputs=DIGEST, --platform=P and --build-arg=K=V options, e.g.
    --inputs=sha256:… COPY . /src
A line starting with { is a step as JSON, for instructions that span
lines (heredocs, continuations):
    {"instruction": "RUN a \\\n  && b", "platform": "linux/amd64"}
with the fields instruction, inputs_digest, platform and build_args.
It prints one line per step (HIT with the layer, or MISS) and exits 0 when
every step hit, 2 otherwise; "next" is the --parent for the first miss.

Limits: a line of the chain file is at most 1 MiB. A chain may be of any
length: the server answers at most 1000 steps per call, so a longer chain
is looked up in several calls, each starting on the "next" of the step
before it.`,
		Example: `  cairn lookup --instruction 'RUN apt-get update' --parent sha256:...
  cairn lookup --chain steps.txt --platform linux/amd64 --json`,
		Args: cobra.NoArgs,
	}
	cf := addClientFlags(a, cmd, false)
	sf := addStepFlags(cmd)
	nss := addNamespacesFlag(cmd)
	cmd.Flags().StringVar(&chain, "chain", "", `file with one step per line ("-": stdin)`)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		parent, err := sf.parentDigest()
		if err != nil {
			return err
		}
		if chain == "" {
			if sf.instruction == "" {
				return errors.New("say which step: --instruction 'RUN ...', or --chain FILE")
			}
			step, err := sf.step()
			if err != nil {
				return err
			}
			ctx, c, done, err := cf.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			rec, err := c.LookupStepIn(ctx, *nss, parent, step)
			if errors.Is(err, client.ErrMiss) {
				if cf.json {
					_ = cf.printJSON(struct {
						Hit bool `json:"hit"`
					}{false})
				}
				return &exitError{code: exitMiss, err: fmt.Errorf("miss: no cached step for %q on parent %s", step.Instruction, parentName(parent))}
			}
			if err != nil {
				return cf.fail(err)
			}
			if cf.json {
				return cf.printJSON(struct {
					Hit bool `json:"hit"`
					client.StepRecord
				}{true, rec})
			}
			return printStepRecord(a.stdout, rec)
		}

		if sf.instruction != "" || sf.inputs != "" || len(sf.buildArgs) > 0 {
			return errors.New("--chain takes the steps from the file: drop --instruction, --inputs and --build-arg")
		}
		var r io.Reader = a.stdin
		if chain != "-" {
			f, err := os.Open(chain)
			if err != nil {
				return err
			}
			defer closeQuietly(f)
			r = f
		}
		steps, err := parseChain(r, sf.platform)
		if err != nil {
			return fmt.Errorf("%s: %w", chain, err)
		}
		if len(steps) == 0 {
			return fmt.Errorf("%s: no steps in it", chain)
		}
		ctx, c, done, err := cf.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer done()
		recs, err := lookupChain(ctx, c, *nss, parent, steps)
		if err != nil {
			return cf.fail(err)
		}
		next := parent
		if len(recs) > 0 {
			next = recs[len(recs)-1].Next
		}
		res := chainOutput{Steps: len(steps), Hits: len(recs), Next: next, Records: recs}
		if res.Records == nil {
			res.Records = []client.StepRecord{}
		}
		if cf.json {
			if err := cf.printJSON(res); err != nil {
				return err
			}
		} else {
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			for i, s := range steps {
				s.Instruction = strings.ReplaceAll(s.Instruction, "\n", `\n`) // one line per step
				switch {
				case i < len(recs) && recs[i].Layer != nil:
					fmt.Fprintf(tw, "HIT\t%s\t%s\n", recs[i].Layer.Digest, s.Instruction)
				case i < len(recs):
					fmt.Fprintf(tw, "HIT\t(no layer)\t%s\n", s.Instruction)
				default:
					fmt.Fprintf(tw, "MISS\t\t%s\n", s.Instruction)
				}
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "next %s\n", parentName(next))
		}
		if len(recs) < len(steps) {
			return &exitError{code: exitMiss, err: fmt.Errorf("miss: %d of %d steps cached; step %d (%q) is the first to run",
				len(recs), len(steps), len(recs)+1, steps[len(recs)].Instruction)}
		}
		return nil
	}
	return cmd
}

// lookupChain looks up a chain of any length. The server answers at most
// cairnv1.MaxChainSteps steps per call, so a longer chain goes in several
// calls, each on the "next" of the last step of the call before; it stops
// at the first miss, as one call would.
func lookupChain(ctx context.Context, c *client.Client, nss []string, parent digest.Digest, steps []client.Step) ([]client.StepRecord, error) {
	var recs []client.StepRecord
	for start := 0; start < len(steps); {
		batch := steps[start:min(len(steps), start+cairnv1.MaxChainSteps)]
		got, err := c.LookupChainIn(ctx, nss, parent, batch)
		if err != nil {
			if len(steps) > len(batch) {
				err = fmt.Errorf("steps %d to %d of %d: %w", start+1, start+len(batch), len(steps), err)
			}
			return nil, err
		}
		recs = append(recs, got...)
		if len(got) < len(batch) {
			break
		}
		parent = got[len(got)-1].Next
		start += len(batch)
	}
	return recs, nil
}

// parentName prints a parent for people: "" is scratch.
func parentName(d digest.Digest) string {
	if d == "" {
		return "scratch"
	}
	return d.String()
}

// printStepRecord prints a step record as "name value" lines.
func printStepRecord(w io.Writer, rec client.StepRecord) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "key\t%s\n", rec.Key)
	fmt.Fprintf(tw, "parent\t%s\n", parentName(rec.Parent))
	fmt.Fprintf(tw, "instruction\t%s\n", rec.Step.Instruction)
	if rec.Step.InputsDigest != "" {
		fmt.Fprintf(tw, "inputs\t%s\n", rec.Step.InputsDigest)
	}
	if rec.Step.Platform != "" {
		fmt.Fprintf(tw, "platform\t%s\n", rec.Step.Platform)
	}
	for _, b := range rec.Step.BuildArgs {
		fmt.Fprintf(tw, "build-arg\t%s\n", b)
	}
	if rec.Layer != nil {
		fmt.Fprintf(tw, "layer\t%s\n", rec.Layer.Digest)
		if rec.Layer.DiffID != "" && rec.Layer.DiffID != rec.Layer.Digest {
			fmt.Fprintf(tw, "diff-id\t%s\n", rec.Layer.DiffID)
		}
		fmt.Fprintf(tw, "size\t%d\n", rec.Layer.Size)
	} else {
		fmt.Fprintf(tw, "layer\t(none)\n")
	}
	fmt.Fprintf(tw, "next\t%s\n", rec.Next)
	if rec.Namespace != "" {
		fmt.Fprintf(tw, "namespace\t%s\n", rec.Namespace)
	}
	fmt.Fprintf(tw, "hits\t%d\n", rec.Hits)
	if rec.Divergences > 0 {
		fmt.Fprintf(tw, "divergences\t%d records for this step with another layer were refused, the last at %s\n",
			rec.Divergences, rec.LastDivergence.Format(time.RFC3339))
	}
	return tw.Flush()
}

// maxChainLine bounds a line of a chain file, in bytes.
const maxChainLine = 1 << 20

// parseChain reads a chain file: one instruction per line, optionally
// after --inputs=, --platform= and --build-arg= options, or one JSON step
// per line; platform is the default for steps that do not set one.
func parseChain(r io.Reader, platform string) ([]client.Step, error) {
	if err := checkUTF8("--platform", platform); err != nil {
		return nil, err
	}
	var steps []client.Step
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxChainLine)
	n := 1
	for ; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := checkUTF8(fmt.Sprintf("line %d", n), line); err != nil {
			return nil, err
		}
		s := client.Step{Platform: platform}
		if strings.HasPrefix(line, "{") {
			dec := json.NewDecoder(strings.NewReader(line))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&s); err != nil {
				return nil, fmt.Errorf("line %d: a JSON step: %v", n, err)
			}
			if s.Instruction == "" {
				return nil, fmt.Errorf("line %d: a JSON step without an instruction", n)
			}
			steps = append(steps, s)
			continue
		}
		for strings.HasPrefix(line, "--") {
			opt, rest, _ := strings.Cut(line, " ")
			line = strings.TrimSpace(rest)
			name, val, ok := strings.Cut(opt[2:], "=")
			if !ok {
				return nil, fmt.Errorf("line %d: option %q: want --name=value", n, opt)
			}
			switch name {
			case "inputs":
				d, err := parseDigest(fmt.Sprintf("line %d: --inputs", n), val)
				if err != nil {
					return nil, err
				}
				s.InputsDigest = d
			case "platform":
				s.Platform = val
			case "build-arg":
				s.BuildArgs = append(s.BuildArgs, val)
			default:
				return nil, fmt.Errorf("line %d: unknown option %q (want --inputs=, --platform= or --build-arg=)", n, opt)
			}
		}
		if line == "" {
			return nil, fmt.Errorf("line %d: options but no instruction", n)
		}
		s.Instruction = line
		steps = append(steps, s)
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		return nil, fmt.Errorf("line %d: longer than %s, the most a line of a chain may be", n, sizeflag.Format(maxChainLine))
	}
	return steps, sc.Err()
}
