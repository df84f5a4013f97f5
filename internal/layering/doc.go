// Package layering holds no code: its test checks the module's dependency
// rules (the Layout section of the design) over the import graph that
// `go list -deps` reports, so that a new import across a layer fails a test
// instead of waiting for a reviewer. The rules are one table in
// layering_test.go; a failure names the rule, the importing package and the
// imported one, with the path of imports between them.
package layering
