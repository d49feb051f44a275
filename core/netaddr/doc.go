// Package netaddr moves a service address (a VIP) from host to host in
// process: it adds, deletes and looks up an address on a link over
// rtnetlink, and announces it to the link's neighbours with one gratuitous
// ARP (IPv4) or unsolicited neighbour advertisement (IPv6).
//
// A migration moves the service address with the process. The source
// deletes it (Del) once the dump is done, so that its kernel no longer
// answers for it; the target adds it (Add) and announces it (Announce)
// before the resume, so that clients' packets reach the target at once
// rather than when the neighbours' caches expire. Run as hooks, that is a
// fork of ip(8) and of arping(8), each some 3 ms of downtime; here each
// operation is a few system calls: 35 to 55 µs with sockets of its own,
// 15 to 30 µs on a Handle's (BenchmarkAddDel, BenchmarkAnnounce and their
// Handle variants).
//
// An address is written "ADDR/PLEN@LINK" (Parse, Addr.String). The
// package-level functions work in the network namespace of the calling
// thread: a caller that needs another one locks its goroutine to its
// thread (runtime.LockOSThread) and enters it (setns) first. A Handle
// keeps its sockets open across calls, in the namespace of the thread
// that opened it. Nothing else is kept: each call looks its link up by
// name (one RTM_GETLINK), for a link may be renamed or replaced.
//
// What the kernel decides:
//
//   - IPv6: an address goes through duplicate address detection and is
//     "tentative", unusable, for a second or more, unless added with
//     IFA_F_NODAD, as Add does: the address is the one that just left
//     another host, so detection would only cost time.
//   - IPv4: an address is primary or secondary. It is a secondary when
//     the link has a primary with the same prefix length and subnet:
//     10.0.0.100/24 next to the host's 10.0.0.5/24. Deleting a primary
//     deletes its secondaries (unless the link's promote_secondaries
//     sysctl is set), so a VIP added as /24 first becomes the primary
//     whose Del takes the host's own address with it, or a secondary that
//     goes when the host's address does. No flag of RTM_NEWADDR changes
//     that. A /32, Parse's default, shares no subnet and is always a
//     primary of its own: use that.
//
// The package knows nothing of processes, images or the transport; its
// callers give it addresses.
package netaddr
