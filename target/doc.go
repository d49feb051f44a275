// Package target is the restoring side of migrate: it validates an image,
// builds a stopped husk process with the original PID, lays out its memory,
// files and signal state, sets its registers and lets it run.
//
// Serve is the target service of live migration; with ServeOptions.Metrics
// it counts its sessions into Prometheus metrics of its own registry
// (metrics.go).
//
// target must not know how the source dumps.
package target
