// Package sockets describes the sockets of a process being dumped, from
// the agent's duplicates of its fds: unix sockets (through a small
// sock_diag client, diag_socket.go), TCP and UDP sockets, their options
// (only those that differ from a new socket's) and their queued bytes,
// peeked and never consumed. It reads established TCP connections in
// repair mode (Conns) once the caller has the network lock on, and gives
// them back to their process on a rollback.
//
// It owns the socket half of a dump: what a socket is and how it is read.
// It does not know the dump that calls it: the process, where blobs go and
// which sockets belong to the dump come in a Process; a socket it cannot
// take is refused with an *UnsupportedError, which the caller reports as
// its own. The network lock itself (core/netlock) is the caller's.
package sockets
