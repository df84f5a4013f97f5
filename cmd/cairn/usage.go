package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

// usageError is an error in how a command was called (the count of its
// arguments, an unknown flag): its message ends with the command's usage
// line, so that "accepts 1 arg(s), received 0" says what the command wants.
type usageError struct {
	cmd *cobra.Command
	err error
}

func (e *usageError) Error() string {
	return fmt.Sprintf("%s: %v\nusage: %s", e.cmd.CommandPath(), e.err, e.cmd.UseLine())
}

func (e *usageError) Unwrap() error { return e.err }

// withUsage makes the argument-count and flag errors of root and of every
// command under it, as the tree stands when it is called, usageErrors.
func withUsage(root *cobra.Command) {
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageError{cmd: cmd, err: err}
	})
	var wrap func(*cobra.Command)
	wrap = func(c *cobra.Command) {
		if check := c.Args; check != nil {
			c.Args = func(cmd *cobra.Command, args []string) error {
				if err := check(cmd, args); err != nil {
					return &usageError{cmd: cmd, err: err}
				}
				return nil
			}
		}
		for _, sub := range c.Commands() {
			wrap(sub)
		}
	}
	wrap(root)
}
