package auth

import (
	"context"
	"log/slog"
)

// Audit writes one audit line: who did what, to which namespace. The fronts
// call it once per write, delete and admin call (reads are too many to log
// and change nothing), after the call, with its outcome in attrs (for
// example slog.Int("status", 201) or slog.String("code", "OK")). The
// interceptor and the middleware of this package do so for the calls they
// can describe; see each. A nil log writes nothing.
func Audit(log *slog.Logger, id *Identity, action Action, what, namespace string, attrs ...slog.Attr) {
	if log == nil {
		return
	}
	all := make([]slog.Attr, 0, 5+len(attrs))
	all = append(all,
		slog.String("who", id.String()),
		slog.Bool("anonymous", id != nil && id.Anonymous),
		slog.String("action", action.String()),
		slog.String("what", what),
		slog.String("namespace", namespace),
	)
	all = append(all, attrs...)
	log.LogAttrs(context.Background(), slog.LevelInfo, "audit", all...)
}
