package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/auth"
)

func newTokenCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Make tokens for the credentials file (--auth-file)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newTokenNewCmd(a))
	return cmd
}

func newTokenNewCmd(a *app) *cobra.Command {
	var name string
	var read, write, del, admin []string
	cmd := &cobra.Command{
		Use:   "new --name NAME [--read NS,...] [--write NS,...] [--delete NS,...] [--admin NS,...]",
		Short: "Make a token and print its entry for the credentials file",
		Long: `Token new makes a random token and prints, on standard error, the token
itself (shown once: the server keeps only its SHA-256), and on standard
output a credentials file (cairn serve --auth-file) holding its entry:
the file itself for a first token, else the entry to add under "tokens:". Each of --read, --write, --delete and --admin
takes namespace patterns: exact ("main"), a prefix ("pr/*") or "*".

A pull request's token reads main's step records and writes only its own:
    cairn token new --name pr-1234 --read main,pr/1234 --write pr/1234`,
		Example: `  cairn token new --name ci-main --read '*' --write main,cache/app
  cairn token new --name ops --read '*' --write '*' --delete '*' --admin '*'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				return fmt.Errorf("say whose token it is: --name NAME (it names the caller in audit lines)")
			}
			entry := auth.TokenConfig{Name: name}
			for _, s := range []struct {
				action string
				ns     []string
			}{{"read", read}, {"write", write}, {"delete", del}, {"admin", admin}} {
				if len(s.ns) > 0 {
					entry.Scopes = append(entry.Scopes, auth.ScopeConfig{Actions: []string{s.action}, Namespaces: s.ns})
				}
			}
			if len(entry.Scopes) == 0 {
				return fmt.Errorf("a token that may do nothing: give it --read, --write, --delete or --admin namespaces")
			}
			token, hash, err := auth.NewToken()
			if err != nil {
				return err
			}
			entry.SHA256 = hash
			cfg := &auth.Config{Tokens: []auth.TokenConfig{entry}}
			b, err := cfg.Marshal()
			if err != nil {
				return err
			}
			// The same checks as the server's: a bad pattern fails here.
			if _, err := auth.ParseConfig(b); err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "token (give it to the client as --token or CAIRN_TOKEN; it is not shown again):\n%s\n", token)
			_, err = a.stdout.Write(b)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "the token's name, as audit lines show it")
	f.StringSliceVar(&read, "read", nil, "namespace patterns the token may read (comma-separated)")
	f.StringSliceVar(&write, "write", nil, "namespace patterns the token may write")
	f.StringSliceVar(&del, "delete", nil, "namespace patterns the token may delete in")
	f.StringSliceVar(&admin, "admin", nil, "namespace patterns the token may administer (gc, verify need \"*\")")
	return cmd
}
