// Package target is the restoring side of migrate: it validates an image,
// builds a stopped husk process with the original PID, lays out its memory,
// files and signal state, sets its registers and lets it run.
//
// target must not know how the source dumps.
package target
