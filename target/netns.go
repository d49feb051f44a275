package target

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/netconf"
	"github.com/procmig/migrate/core/netlock"
	"github.com/procmig/migrate/core/proc"
)

// A container with a network namespace of its own (Namespaces.Net) gets a
// new one: its root is cloned with CLONE_NEWNET, then prepareNet makes
// each veth (the container's end moved in under its name and MAC address,
// the other end here, in migrate's namespace, under its old name if free,
// down until the resume, then up and on the bridge of --net-attach if
// given, else left for a hook),
// and gives the namespace its addresses, routes and sysctls. The
// container's sockets are made in it (inNet), and the network lock of a
// live migration is taken there.

// ownNet says whether the processes get a network namespace of their own.
func (ss *session) ownNet() bool {
	return ss.container() && ss.img.Namespaces.Net != nil
}

// netNSPath is the network namespace the restored processes live in, as
// netlock takes it: the root's, or "" (migrate's).
func (ss *session) netNSPath() string {
	if !ss.ownNet() {
		return ""
	}
	return "/proc/" + strconv.Itoa(ss.img.Process.PID) + "/ns/net"
}

// inNet runs fn on a thread in the processes' network namespace: the
// sockets it makes are theirs.
func (ss *session) inNet(fn func() error) error {
	if !ss.ownNet() {
		return fn()
	}
	return proc.InNamespace(ss.img.Process.PID, unix.CLONE_NEWNET, fn)
}

// netNS is the processes' network namespace as netlock takes it (the
// root's path, or "": migrate's) and a socket maker in it, that reads
// nothing of ss afterwards: for a goroutine that runs on while the
// restore goes on (the live target's network lock).
func (ss *session) netNS() (string, netlock.SocketFunc) {
	if !ss.ownNet() {
		return "", unix.Socket
	}
	pid := ss.img.Process.PID
	return ss.netNSPath(), func(domain, typ, proto int) (fd int, err error) {
		err = proc.InNamespace(pid, unix.CLONE_NEWNET, func() (err error) {
			fd, err = unix.Socket(domain, typ, proto)
			return err
		})
		return fd, err
	}
}

// netSocket is socket(2) in the processes' network namespace.
func (ss *session) netSocket(domain, typ, proto int) (fd int, err error) {
	err = ss.inNet(func() (err error) {
		fd, err = unix.Socket(domain, typ, proto)
		return err
	})
	return fd, err
}

// prepareNet makes the container's network namespace, new and empty but
// for its loopback, as the image has it (see above). The other ends of
// its veths are named in ss.netHosts.
//
// Preconditions: the root was cloned with CLONE_NEWNET.
func (ss *session) prepareNet() error {
	n := ss.img.Namespaces.Net
	root := ss.img.Process.PID
	ns, err := os.Open("/proc/" + strconv.Itoa(root) + "/ns/net")
	if err != nil {
		return fmt.Errorf("network namespace of %d: %w", root, err)
	}
	defer ns.Close()
	if ss.netAttach != "" && !netconf.LinkExists(ss.netAttach) {
		return &netconf.Error{What: "--net-attach " + ss.netAttach, Err: errors.New("no such bridge here")}
	}
	for i := range n.Links {
		l := &n.Links[i]
		if l.Kind != core.LinkVeth {
			continue
		}
		host := l.Peer
		if host != "" && netconf.LinkExists(host) {
			// The original's, when it was here: its namespace is torn
			// down by the kernel some time after its last process died,
			// and the veth with it.
			deadline := time.Now().Add(peerGoneWait)
			for netconf.LinkExists(host) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
		}
		if host == "" || netconf.LinkExists(host) || slices.Contains(ss.netHosts, host) {
			if host, err = freeLinkName(); err != nil {
				return err
			}
			if l.Peer != "" {
				ss.warn("veth %s: the name of its other end here, %s, is taken: it is %s", l.Name, l.Peer, host)
			}
		}
		if err := netconf.CreateVeth(host, l, int(ns.Fd())); err != nil {
			return err
		}
		ss.netHosts = append(ss.netHosts, host)
	}
	return proc.InNamespace(root, unix.CLONE_NEWNET, func() error { return netconf.Apply(n) })
}

// attachNet puts the other ends of the container's veths up, on the
// bridge of --net-attach if given, just before the processes resume:
// until then the container's interfaces have no carrier, and nothing of
// it (its MAC addresses, its IPv6 neighbour and router solicitations)
// reaches the network while the original still runs elsewhere (a live
// migration builds the namespace at its first round).
func (ss *session) attachNet() error {
	for _, host := range ss.netHosts {
		if err := netconf.Attach(host, ss.netAttach); err != nil {
			return err
		}
	}
	return nil
}

// peerGoneWait bounds the wait for the recorded name of a veth's other
// end to be free (see prepareNet).
const peerGoneWait = 3 * time.Second

// freeLinkName returns a name no link here has: "mv" and 8 random hex
// digits.
func freeLinkName() (string, error) {
	for range 100 {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		if name := "mv" + hex.EncodeToString(b[:]); !netconf.LinkExists(name) {
			return name, nil
		}
	}
	return "", fmt.Errorf("no free interface name")
}

// checkNet compares the container's network namespace with the image.
func (b *Builder) checkNet() []Difference {
	return CheckNet(b.ss.img.Process.PID, b.ss.img.Namespaces.Net)
}

// CheckNet compares the network namespace of process root with want:
// its interfaces (kind, MAC address, MTU, state, addresses), routes and
// sysctls. The name of a veth's other end is not compared.
func CheckNet(root int, want *core.NetNamespace) []Difference {
	var diffs []Difference
	diff := func(what string, w, g any) {
		if fmt.Sprint(w) != fmt.Sprint(g) {
			diffs = append(diffs, Difference{PID: root, What: what, Want: fmt.Sprint(w), Got: fmt.Sprint(g)})
		}
	}
	var cfg *netconf.Config
	if err := proc.InNamespace(root, unix.CLONE_NEWNET, func() (err error) { cfg, err = netconf.Read(); return err }); err != nil {
		diff("network namespace", "readable", err)
		return diffs
	}
	got := cfg.Core()
	link := func(l core.NetLink) string {
		return fmt.Sprintf("%s mac %s mtu %d up %v addrs %v", l.Kind, l.MAC, l.MTU, l.Up, l.Addrs)
	}
	byName := map[string]core.NetLink{}
	for _, l := range got.Links {
		byName[l.Name] = l
	}
	var names []string
	for _, l := range want.Links {
		names = append(names, l.Name)
		g, ok := byName[l.Name]
		if !ok {
			diff("interface "+l.Name, link(l), "absent")
			continue
		}
		diff("interface "+l.Name, link(l), link(g))
	}
	for _, l := range got.Links {
		if !slices.Contains(names, l.Name) {
			diff("interface "+l.Name, "absent", link(l))
		}
	}
	diff("routes", want.Routes, got.Routes)
	for name, v := range want.Sysctls {
		diff("sysctl "+name, v, got.Sysctls[name])
	}
	return diffs
}
