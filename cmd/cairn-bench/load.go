package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/bench/load"
	"github.com/cairnbuild/cairn/client"
)

// defaultServer is `cairn serve`'s default listen address.
const defaultServer = "127.0.0.1:7070"

// newLoadCmd is `cairn-bench load`: concurrent clients against a running
// server.
func newLoadCmd(a *app) *cobra.Command {
	var (
		opt        load.Options
		server     string
		layer, mix string
		asJSON     bool
	)
	cmd := &cobra.Command{
		Use:   "load",
		Short: "Drive a running server with concurrent lookups, pushes and pulls; report ops/s, MB/s, latency",
		Long: `Load runs N clients against a cairn server, each doing a random mix of step
lookups (half of them hits on step chains it seeded), pushes of fresh random layers
and pulls of layers pushed before, and prints per kind of operation: count,
errors, operations per second, MB/s and the p50, p99, p99.9 and max latency.

It stops by itself: no operation starts after --duration, and at most
--max-ops run. The seeded layers and steps stay on the server.`,
		Example: `  cairn-bench load --server 127.0.0.1:7070 --clients 8 --duration 30s
  cairn-bench load --mix 0,1,0 --layer-size 16M --json   # pushes only
  cairn-bench load --mix 1,0,0 --chain 20                 # 20-step LookupChain calls only`,
		Args: cobra.NoArgs,
	}
	fs := cmd.Flags()
	fs.StringVar(&server, "server", defaultServer, "address (host:port) of the cairn server")
	fs.BoolVar(&asJSON, "json", false, "print the result as JSON on stdout, for scripts")
	fs.IntVar(&opt.Clients, "clients", 4, "concurrent clients")
	fs.DurationVar(&opt.Duration, "duration", 10*time.Second, "start no operation after this long")
	fs.Int64Var(&opt.MaxOps, "max-ops", 100_000, "stop after this many operations")
	fs.StringVar(&mix, "mix", "70,15,15", "relative weights of lookups, pushes and pulls")
	fs.StringVar(&layer, "layer-size", "1M", "size of each pushed layer (random bytes)")
	fs.IntVar(&opt.ChainSteps, "chain", 1, "steps per lookup: 1 asks with LookupStep, more with one LookupChain (a Dockerfile's length)")
	fs.Uint64Var(&opt.Seed, "seed", uint64(time.Now().UnixNano()), "seed of the operation sequence and data")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		n, err := parseSize(layer)
		if err != nil || n <= 0 || n > 1<<30 {
			return fmt.Errorf("--layer-size %q: want a size from 1 byte to 1G", layer)
		}
		opt.LayerBytes = int(n)
		if _, err := fmt.Sscanf(mix, "%d,%d,%d", &opt.Mix[0], &opt.Mix[1], &opt.Mix[2]); err != nil {
			return fmt.Errorf("--mix %q: want three weights, lookups,pushes,pulls, e.g. 70,15,15", mix)
		}
		if opt.Mix[0] < 0 || opt.Mix[1] < 0 || opt.Mix[2] < 0 || opt.Mix[0]+opt.Mix[1]+opt.Mix[2] == 0 {
			return fmt.Errorf("--mix %q: weights must be non-negative and not all zero", mix)
		}
		if opt.ChainSteps <= 0 || opt.ChainSteps > 100 {
			return fmt.Errorf("--chain %d: want 1 to 100 steps", opt.ChainSteps)
		}
		if opt.Clients <= 0 || opt.Clients > 1024 {
			return fmt.Errorf("--clients %d: want 1 to 1024", opt.Clients)
		}
		ctx := cmd.Context()
		c, err := client.Dial(ctx, server)
		if err != nil {
			return fmt.Errorf("connect to %s: %w", server, err)
		}
		defer c.Close()
		res, err := load.Run(ctx, load.ClientTarget(c), opt)
		if errors.Is(err, client.ErrUnavailable) {
			return fmt.Errorf("%w\n(is `cairn serve` running at %s? point --server or CAIRN_SERVER at it)", err, server)
		}
		if err != nil {
			return err
		}
		if asJSON {
			enc := json.NewEncoder(a.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(res)
		}
		return res.WriteText(a.stdout)
	}
	return cmd
}
