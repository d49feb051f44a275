// Package e2e holds migrate's end-to-end tests: real workloads (C programs
// built by the tests, coreutils, python3) dumped to an image directory and
// restored from it, rollback of failed dumps, and refusal of bad input.
// The tests need root; package internal/testutil builds, runs and observes the
// workloads.
package e2e
