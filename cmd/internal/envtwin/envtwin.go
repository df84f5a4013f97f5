// Package envtwin gives every flag of a cobra command tree an environment
// twin: --s3-access-key is also CAIRN_S3_ACCESS_KEY. A command defines its
// flags as usual and never reads the environment itself; Install, called
// once on the finished tree, adds the twins' names to the help and makes
// the command that runs take each flag not given on the command line from
// its twin. The cairn and cairn-bench binaries both use it, so a name means
// the same in each.
package envtwin

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Prefix starts every twin's name.
const Prefix = "CAIRN_"

// Rule says how twins work, for help texts.
const Rule = `Every flag has an environment twin, shown in brackets after it: --foo-bar
is CAIRN_FOO_BAR. A flag given on the command line wins over its twin; an
empty variable counts as unset.`

// annotation marks a flag that Install gave a twin; its value is the twin's
// name.
const annotation = "cairn_env_twin"

// Name is the environment twin of the flag named flag (without dashes):
// "s3-access-key" gives "CAIRN_S3_ACCESS_KEY".
func Name(flag string) string {
	return Prefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// Install gives every flag of root and of all its subcommands, as defined
// when it is called, a twin: it names the twin at the end of the flag's
// usage, adds Rule to the help of every command, and wraps root's
// PersistentPreRunE so that the twins of the command that runs are applied
// (by Apply, reading getenv) before anything else of it runs. Cobra runs
// only the nearest PersistentPreRun(E), so no subcommand may set its own.
// The help flag, which cobra adds later, gets no twin.
func Install(root *cobra.Command, getenv func(string) string) {
	seen := make(map[*pflag.Flag]bool)
	var mark func(*cobra.Command)
	mark = func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.PersistentFlags(), c.Flags()} {
			fs.VisitAll(func(fl *pflag.Flag) {
				if seen[fl] || fl.Name == "help" {
					return
				}
				seen[fl] = true
				name := Name(fl.Name)
				if fl.Annotations == nil {
					fl.Annotations = make(map[string][]string)
				}
				fl.Annotations[annotation] = []string{name}
				fl.Usage += " [$" + name + "]"
			})
		}
		for _, sub := range c.Commands() {
			mark(sub)
		}
	}
	mark(root)

	root.SetUsageTemplate(root.UsageTemplate() + "\n" + Rule + "\n")
	next := root.PersistentPreRunE
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		if err := Apply(cmd.Flags(), getenv); err != nil {
			return err
		}
		if next != nil {
			return next(cmd, args)
		}
		return nil
	}
}

// Apply sets every flag of fs that has a twin (see Install) and was not
// given on the command line from that twin, when getenv returns it
// non-empty. A flag set this way keeps Changed false: Changed still says
// what the command line gave. The error names every twin that did not
// parse.
func Apply(fs *pflag.FlagSet, getenv func(string) string) error {
	var errs []error
	fs.VisitAll(func(fl *pflag.Flag) {
		twin := fl.Annotations[annotation]
		if fl.Changed || len(twin) != 1 {
			return
		}
		v := getenv(twin[0])
		if v == "" {
			return
		}
		if err := fl.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q (the twin of --%s): %v", twin[0], v, fl.Name, err))
		}
	})
	return errors.Join(errs...)
}
