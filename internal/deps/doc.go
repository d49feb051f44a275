// Package deps holds no code: its test, deps_test.go, checks the rules
// between the packages of migrate (which may import which, test files
// included) from what `go list` reports, so that a change that breaks the
// layout fails `go test` instead of waiting for a reader to notice. The
// rules are a table there; docs/ARCHITECTURE.md explains them.
package deps
