// Package netlock holds a process's TCP connections still while it is frozen
// for migration. Between the freeze and the kill of the original, the
// source kernel must neither answer the connections' packets (once the
// original is killed it would send RST) nor refuse connection requests to
// the process's listening ports (they must be dropped, so clients retransmit
// to the target once the service address has moved).
//
// A lock is one nftables table of family inet in the process's network
// namespace, installed in a single netlink batch with
// github.com/google/nftables: sets of the connections and listeners, and
// rules that drop their packets (rules.go draws the table and explains the
// hooks). Tables are named after their owner (name.go), so that CleanStale
// can remove the locks of a migrate that died, even after its pid was
// reused, while locks meant to outlive their maker (Options.Keep) are left
// for a restore to Remove.
//
// The package knows nothing of the image model, of ptrace or of the
// transport; callers give it addresses.
package netlock
