package source

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/netlock"
)

// The network lock of a dump (core/netlock) and its TCP connections
// (ss.tcp, read by the sockets package).

// repairTCP reads every noted connection in repair mode, its queues
// stored as blobs. The network lock must be on; on error the rollback
// (unrepairTCP) turns repair mode off.
func (ss *session) repairTCP() error { return ss.tcp.Repair(ss.copyBlob) }

// unrepairTCP gives every connection back to its process, as it was.
func (ss *session) unrepairTCP() error { return ss.tcp.Unrepair() }

// closeTCP lets go of the duplicates of the connections (repair mode, if
// on, stays on: the original is about to be killed).
func (ss *session) closeTCP() { ss.tcp.Close() }

// lockName is the text a report shows for a lock.
func lockName(l *netlock.Lock) string {
	if l == nil {
		return ""
	}
	return l.Name()
}

// lockNetwork turns the network lock on in the network namespace of pid
// for the noted connections and the tree's TCP listening ports, if there
// is anything to lock: connections always (their state must not move
// while it is read), listening ports when the process is to stop
// listening here (a client's SYN is dropped and sent again, to the new
// host, rather than refused). keep makes a lock that outlives this
// process. A lock that is only for listening ports and cannot be had is
// worth a warning, not a failed dump.
func (ss *session) lockNetwork(pid int, listeners []netip.AddrPort, keep bool) error {
	if ss.tcp.Len() == 0 && len(listeners) == 0 {
		return nil
	}
	l, err := netlock.Install(fmt.Sprintf("/proc/%d/ns/net", pid), ss.tcp.LockSpec(listeners), netlock.Options{Keep: keep})
	if err != nil {
		if ss.tcp.Len() == 0 {
			ss.log.Warn("no network lock: clients connecting before the restore are refused", "err", err)
			return nil
		}
		return fmt.Errorf("network lock for %d TCP connections: %w", ss.tcp.Len(), err)
	}
	ss.lock = l
	ss.log.Debug("network lock on", "table", l.Name(), "connections", ss.tcp.Len(), "listeners", len(listeners))
	return nil
}

// liftLock makes the network lock drop nothing (unlock removes it).
func (ss *session) liftLock() {
	if ss.lock == nil {
		return
	}
	if err := ss.lock.Lift(); err != nil {
		ss.log.Warn("lift the network lock", "table", ss.lock.Name(), "err", err)
	}
}

// unlock removes the network lock, if on.
func (ss *session) unlock() {
	if ss.lock == nil {
		return
	}
	if err := ss.lock.Unlock(); err != nil {
		ss.log.Error("remove the network lock", "table", ss.lock.Name(), "err", err)
	}
	ss.lock = nil
}

// tcpListeners lists the local addresses of the TCP listening sockets of
// the tree.
func tcpListeners(all []*dumper) []netip.AddrPort {
	var out []netip.AddrPort
	for _, d := range all {
		for _, f := range d.proc.FDs {
			s := f.Socket
			if s == nil || s.State != core.SockListen || (s.Family != unix.AF_INET && s.Family != unix.AF_INET6) {
				continue
			}
			if ap, err := netip.ParseAddrPort(s.Local); err == nil {
				out = append(out, ap)
			}
		}
	}
	return out
}
