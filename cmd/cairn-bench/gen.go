package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"math/rand/v2"

	"github.com/spf13/cobra"
)

// newGenCmd is `cairn-bench gen`: seeded pseudo-random bytes, a stand-in
// for a large layer (`cairn-bench gen 4G | cairn push -`). Far faster than
// /dev/urandom.
func newGenCmd(a *app) *cobra.Command {
	var seed uint64
	cmd := &cobra.Command{
		Use:     "gen SIZE",
		Short:   "Write SIZE bytes of seeded pseudo-random data to stdout (e.g. 4G), for big-layer tests",
		Example: `  cairn-bench gen 4G | cairn push - --json`,
		Args:    cobra.ExactArgs(1),
	}
	cmd.Flags().Uint64Var(&seed, "seed", 1, "seed: the same seed and size give the same bytes")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		n, err := parseSize(args[0])
		if err != nil {
			return err
		}
		var key [32]byte
		binary.LittleEndian.PutUint64(key[:], seed)
		rng := rand.NewChaCha8(key)
		w := bufio.NewWriterSize(a.stdout, 1<<20)
		buf := make([]byte, 1<<20)
		for n > 0 {
			if err := cmd.Context().Err(); err != nil {
				return err
			}
			b := buf[:min(int64(len(buf)), n)]
			rng.Read(b)
			if _, err := w.Write(b); err != nil {
				return fmt.Errorf("write: %w", err)
			}
			n -= int64(len(b))
		}
		return w.Flush()
	}
	return cmd
}
