package source

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/procmig/migrate/core/netlock"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/source/sockets"
)

// A connection that a listener's kernel has completed but the process has
// not accepted yet, at the freeze, cannot move: it lives in the listener's
// accept queue, which no one can fill on the target. Nor can a handshake
// half done (a request socket in SYN_RECV). So before the freeze the
// network lock goes on for the listening ports alone (new SYNs are
// dropped, and kept to be sent on later, see hold.go), and the process,
// still running, accepts what is already there; the freeze waits for its
// accept queues to empty, a few milliseconds for a live server.

// listenerInfo is a TCP listening socket of the process.
type listenerInfo struct {
	local netip.AddrPort
	inode uint64
}

// tcpEntry is a line of /proc/PID/net/tcp or tcp6.
type tcpEntry struct {
	local, remote netip.AddrPort
	state         uint8
	rxQueue       uint64 // for a listener: its accept queue
	inode         uint64
}

// readTCPTable reads the TCP sockets of pid's network namespace.
func readTCPTable(pid int) ([]tcpEntry, error) {
	var out []tcpEntry
	for _, name := range []string{"tcp", "tcp6"} {
		b, err := proc.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, name))
		if err != nil {
			if os.IsNotExist(err) && name == "tcp6" {
				continue // no IPv6
			}
			return nil, err
		}
		es, err := parseTCPTable(b)
		if err != nil {
			return nil, fmt.Errorf("/proc/%d/net/%s: %w", pid, name, err)
		}
		out = append(out, es...)
	}
	return out, nil
}

// parseTCPTable parses /proc/net/tcp or tcp6.
func parseTCPTable(b []byte) ([]tcpEntry, error) {
	lines := bytes.Split(b, []byte("\n"))
	var out []tcpEntry
	for i, l := range lines {
		f := strings.Fields(string(l))
		if i == 0 || len(f) == 0 {
			continue // the header
		}
		if len(f) < 10 {
			return nil, fmt.Errorf("line %d: %d fields", i+1, len(f))
		}
		var e tcpEntry
		var err error
		if e.local, err = parseProcAddr(f[1]); err != nil {
			return nil, fmt.Errorf("line %d: local address: %w", i+1, err)
		}
		if e.remote, err = parseProcAddr(f[2]); err != nil {
			return nil, fmt.Errorf("line %d: remote address: %w", i+1, err)
		}
		st, err := strconv.ParseUint(f[3], 16, 8)
		if err != nil {
			return nil, fmt.Errorf("line %d: state %q", i+1, f[3])
		}
		e.state = uint8(st)
		_, rx, ok := strings.Cut(f[4], ":")
		if !ok {
			return nil, fmt.Errorf("line %d: queues %q", i+1, f[4])
		}
		if e.rxQueue, err = strconv.ParseUint(rx, 16, 64); err != nil {
			return nil, fmt.Errorf("line %d: queues %q", i+1, f[4])
		}
		if e.inode, err = strconv.ParseUint(f[9], 10, 64); err != nil {
			return nil, fmt.Errorf("line %d: inode %q", i+1, f[9])
		}
		out = append(out, e)
	}
	return out, nil
}

// parseProcAddr parses "0100007F:1F90" (IPv4) or 32 hex digits and a port
// (IPv6): the address as the kernel's 32-bit words in host order.
func parseProcAddr(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("%q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port in %q", s)
	}
	raw, err := hex.DecodeString(a)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("address in %q", s)
	}
	// Each 32-bit word was printed as a host-order (little-endian here)
	// number: its bytes come reversed.
	for w := 0; w < len(raw); w += 4 {
		binary.BigEndian.PutUint32(raw[w:], binary.LittleEndian.Uint32(raw[w:]))
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr, uint16(port)), nil
}

// processSocketInodes returns the inodes of pid's sockets.
func processSocketInodes(pid int) (map[uint64]bool, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[uint64]bool{}
	for _, e := range ents {
		l, err := os.Readlink(dir + "/" + e.Name())
		if err != nil || !strings.HasPrefix(l, "socket:[") {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSuffix(l[len("socket:["):], "]"), 10, 64); err == nil {
			out[n] = true
		}
	}
	return out, nil
}

const (
	tcpSynRecv = 3
	tcpListen  = 10
)

// processListeners lists the TCP listening sockets of pid.
func processListeners(pid int) ([]listenerInfo, error) {
	inodes, err := processSocketInodes(pid)
	if err != nil {
		return nil, err
	}
	table, err := readTCPTable(pid)
	if err != nil {
		return nil, err
	}
	var out []listenerInfo
	for _, e := range table {
		if e.state == tcpListen && inodes[e.inode] {
			out = append(out, listenerInfo{local: e.local, inode: e.inode})
		}
	}
	return out, nil
}

// pendingConnections counts, for these listeners, the connections in their
// accept queues and the handshakes under way.
func pendingConnections(pid int, ls []listenerInfo) (int, error) {
	table, err := readTCPTable(pid)
	if err != nil {
		return 0, err
	}
	byInode := map[uint64]bool{}
	ports := map[uint16]bool{}
	for _, l := range ls {
		byInode[l.inode] = true
		ports[l.local.Port()] = true
	}
	n := 0
	for _, e := range table {
		switch {
		case e.state == tcpListen && byInode[e.inode]:
			n += int(e.rxQueue)
		case e.state == tcpSynRecv && ports[e.local.Port()]:
			n++
		}
	}
	return n, nil
}

// quiesceListeners puts the lock on the process's listening ports and waits
// (up to maxWait) until it has accepted the connections already made. The
// lock and the hold it starts are the caller's to end. Failures only cost
// the wait: the dump refuses a listener with a full accept queue.
func (a *liveSource) quiesceListeners(maxWait time.Duration) {
	d := a.d
	ls, err := processListeners(d.pid)
	if err != nil || len(ls) == 0 {
		if err != nil {
			d.log.Debug("listeners not quiesced", "err", err)
		}
		return
	}
	var spec netlock.Spec
	for _, l := range ls {
		spec.Listeners = append(spec.Listeners, l.local)
	}
	lock, err := netlock.Install(fmt.Sprintf("/proc/%d/ns/net", d.pid), spec, netlock.Options{})
	if err != nil {
		d.log.Warn("no network lock on the listening ports before the freeze", "err", err)
		return
	}
	a.preLock = lock
	if a.hold, err = netlock.StartHold(sockets.NetnsSocket(d.pid), nil, spec.Listeners); err != nil {
		d.log.Warn("SYNs dropped by the network lock are not kept", "err", err)
	}
	start := time.Now()
	for {
		n, err := pendingConnections(d.pid, ls)
		if err != nil || n == 0 {
			break
		}
		if time.Since(start) > maxWait {
			d.log.Warn("connections still wait to be accepted at the freeze", "pending", n, "waited", time.Since(start))
			break
		}
		time.Sleep(time.Millisecond)
	}
	if w := time.Since(start); w > time.Millisecond {
		d.log.Debug("listeners quiesced", "waited", w)
	}
}

// dropPreLock removes the listeners' lock taken before the freeze.
func (a *liveSource) dropPreLock() {
	if a.preLock == nil {
		return
	}
	if err := a.preLock.Unlock(); err != nil {
		a.d.log.Error("remove the network lock", "table", a.preLock.Name(), "err", err)
	}
	a.preLock = nil
}
