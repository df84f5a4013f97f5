package main

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/pflag"
)

// logFlags is --log-level, for the commands that log: serve and reindex.
type logFlags struct {
	name  string
	level slog.Level // parsed from name by check
}

// addFlags registers --log-level.
func (l *logFlags) addFlags(f *pflag.FlagSet) {
	f.StringVar(&l.name, "log-level", "info", "log level: debug, info, warn or error")
}

// check parses --log-level.
func (l *logFlags) check() error {
	if err := l.level.UnmarshalText([]byte(l.name)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", l.name)
	}
	return nil
}

// logger returns a text logger on w at the level.
func (l *logFlags) logger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l.level}))
}
