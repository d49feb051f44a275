package netlock

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

var errESRCH error = unix.ESRCH

// Conn is an established TCP connection as the locked process sees it:
// Local is its socket's address, Remote the peer's.
type Conn struct {
	Local, Remote netip.AddrPort
}

// Spec is what a lock holds still.
type Spec struct {
	// Conns are the established connections: every packet of each, in
	// either direction, is dropped.
	Conns []Conn
	// Listeners are the local addresses of listening sockets: connection
	// requests (SYN without ACK) to them are dropped, so clients retransmit
	// instead of being refused. An unspecified address (0.0.0.0 or ::)
	// stands for any local address of either family: the port alone is
	// matched.
	Listeners []netip.AddrPort
}

// Options tune Install.
type Options struct {
	// Keep makes a lock that outlives this process, for a dump to files that
	// a later restore completes: its table is named migrate_keep_<hex>,
	// CleanStale leaves it alone, and the restore removes it with Remove.
	// The maker lets go of it with Disown once the dump is complete.
	Keep bool
}

// Lock is an installed network lock, made by Install. Its methods may be called from any
// goroutine.
type Lock struct {
	name string

	mu   sync.Mutex
	ns   *os.File // the namespace, held open until Unlock or Disown; nil: the caller's
	done bool     // Unlock or Disown has run
	// lasting is a netlink connection kept open from Install for Add and
	// Lift: each new one enters the namespace on a locked thread first,
	// milliseconds a migration's downtime should not pay.
	lasting *nftables.Conn
}

// conn returns the lock's lasting connection, made on first use.
// Preconditions: l.mu held.
func (l *Lock) conn() (*nftables.Conn, error) {
	if l.lasting != nil {
		return l.lasting, nil
	}
	if err := netfilterNetlink(); err != nil {
		return nil, err
	}
	opts := []nftables.ConnOption{nftables.AsLasting()}
	if l.ns != nil {
		opts = append(opts, nftables.WithNetNSFd(int(l.ns.Fd())))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("netlock: nftables: %w", err)
	}
	l.lasting = c
	return c, nil
}

// Install installs a lock table in the network namespace at netnsPath ("" for
// the caller's, else a namespace file such as /proc/PID/ns/net), in one
// netlink batch: either the whole table is in place or nothing is. The lock
// holds the namespace open until Unlock or Disown, so it removes its table
// from the right namespace even after the path's process has gone.
//
// Preconditions: the caller has CAP_NET_ADMIN over the namespace.
func Install(netnsPath string, spec Spec, opts Options) (*Lock, error) {
	e, err := buildElements(spec)
	if err != nil {
		return nil, err
	}
	var name string
	if opts.Keep {
		name, err = keepName()
	} else {
		var o owner
		o, err = self()
		name = o.name()
	}
	if err != nil {
		return nil, err
	}
	ns, err := openNetNS(netnsPath)
	if err != nil {
		return nil, err
	}
	if err := install(ns, name, e); err != nil {
		if ns != nil {
			ns.Close()
		}
		return nil, err
	}
	l := &Lock{name: name, ns: ns}
	l.mu.Lock()
	l.conn() // now, while nothing waits: a failure is tried again on use
	l.mu.Unlock()
	return l, nil
}

// install puts the table called name, holding e, into ns in one batch.
func install(ns *os.File, name string, e *elements) error {
	// The batch goes to the kernel in one sendmsg, which fails with
	// EMSGSIZE beyond the socket's send buffer (212992 bytes by default,
	// about 3000 IPv6 connections); raise it for big locks, as nft(8) does.
	size := 64*e.count() + 16<<10
	c, err := dial(ns, size)
	if err != nil {
		return err
	}
	defer runtime.KeepAlive(ns)
	if err := build(c, name, e); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netlock: install table inet %s: %w", name, err)
	}
	return nil
}

// Name returns the name of the lock's table (family inet), for logs and for
// the restore side of a Keep lock.
func (l *Lock) Name() string { return l.name }

// Unlock removes the lock's table. It is idempotent, and a table that is
// already gone (removed by Remove, or with its namespace) is no error. After
// an error Unlock may be called again.
func (l *Lock) Unlock() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return nil
	}
	if err := remove(l.ns, l.name); err != nil {
		return err
	}
	l.release()
	return nil
}

// Disown lets go of the lock without removing its table, which then lives
// until Remove (a Keep lock handed to a restore) or until its namespace
// goes. Later calls of Unlock do nothing.
func (l *Lock) Disown() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.done {
		l.release()
	}
}

func (l *Lock) release() {
	l.done = true
	if l.lasting != nil {
		l.lasting.CloseLasting()
		l.lasting = nil
	}
	if l.ns != nil {
		l.ns.Close()
		l.ns = nil
	}
}

// Remove removes the lock table called name from the network namespace at
// netnsPath: the restore side of a Keep lock, or an operator cleaning up.
// A table that is already gone is no error. Names that Install does not make
// are refused with ErrForeignTable.
func Remove(netnsPath, name string) error {
	if _, _, ok := parseName(name); !ok {
		return fmt.Errorf("%w: %q", ErrForeignTable, name)
	}
	ns, err := openNetNS(netnsPath)
	if err != nil {
		return err
	}
	if ns != nil {
		defer ns.Close()
	}
	return remove(ns, name)
}

// CleanStale removes the lock tables whose owner process no longer exists
// (a migrate that died holding a lock) from the network namespace at
// netnsPath and returns their names. Keep tables and other tables are left
// alone. Owners are looked up in the caller's /proc, so CleanStale must run
// in the pid namespace of the migrate that made the locks.
func CleanStale(netnsPath string) ([]string, error) {
	ns, err := openNetNS(netnsPath)
	if err != nil {
		return nil, err
	}
	if ns != nil {
		defer ns.Close()
	}
	c, err := dial(ns, 0)
	if err != nil {
		return nil, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("netlock: list tables: %w", err)
	}
	var removed []string
	var errs []error
	for _, t := range tables {
		o, keep, ok := parseName(t.Name)
		if !ok || keep || o.alive() {
			continue
		}
		if err := remove(ns, t.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, t.Name)
	}
	return removed, errors.Join(errs...)
}

// remove deletes table inet name from ns; a missing table is no error.
func remove(ns *os.File, name string) error {
	c, err := dial(ns, 0)
	if err != nil {
		return err
	}
	c.DelTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet})
	err = c.Flush()
	runtime.KeepAlive(ns)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("netlock: remove table inet %s: %w", name, err)
	}
	return nil
}

// openNetNS opens a network namespace file; "" is the caller's namespace
// (nil). The file is checked to be a network namespace, so that a wrong
// path fails here and not as a puzzling setns error.
func openNetNS(path string) (*os.File, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("netlock: network namespace: %w", err)
	}
	raw, err := f.SyscallConn()
	if err == nil {
		var nstype int
		cerr := raw.Control(func(fd uintptr) {
			nstype, err = unix.IoctlRetInt(int(fd), unix.NS_GET_NSTYPE)
		})
		if err == nil {
			err = cerr
		}
		if err == nil && nstype != unix.CLONE_NEWNET {
			err = fmt.Errorf("namespace type %#x", nstype)
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("netlock: %s is not a network namespace: %w", path, err)
	}
	return f, nil
}

// netfilterNetlink says whether this kernel has nftables' netlink
// (nfnetlink: a module, CONFIG_NETFILTER_NETLINK=m, that a host without
// modprobe, or that never loaded it, lacks): nftables.New does not, and
// its connection fails later on a nil socket instead of with an error.
func netfilterNetlink() error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return fmt.Errorf("netlock: this kernel has no nftables netlink (NETLINK_NETFILTER; module nfnetlink): %w", os.NewSyscallError("socket", err))
	}
	unix.Close(fd)
	return nil
}

// dial makes an nftables connection into ns (nil: the caller's), with a
// send buffer of at least sndbuf bytes. Each Flush opens its own netlink
// socket, entering ns on a locked thread only while creating it.
//
// Preconditions: ns stays open until the connection's last Flush returns.
func dial(ns *os.File, sndbuf int) (*nftables.Conn, error) {
	if err := netfilterNetlink(); err != nil {
		return nil, err
	}
	var opts []nftables.ConnOption
	if ns != nil {
		opts = append(opts, nftables.WithNetNSFd(int(ns.Fd())))
	}
	if sndbuf > 128<<10 {
		opts = append(opts, nftables.WithSockOptions(func(c *netlink.Conn) error {
			return setSendBuffer(c, sndbuf)
		}))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("netlock: nftables: %w", err)
	}
	return c, nil
}

// setSendBuffer raises the socket's send buffer to n bytes: past
// net.core.wmem_max with SO_SNDBUFFORCE when the caller has CAP_NET_ADMIN,
// else as far as SO_SNDBUF goes (the batch then fails with EMSGSIZE if
// still too big).
func setSendBuffer(c *netlink.Conn, n int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, n)
	}); err != nil {
		return err
	}
	if serr != nil {
		return c.SetWriteBuffer(n)
	}
	return nil
}

// Add puts more connections and listening ports under an installed lock,
// in one netlink batch: cheaper than a second table (a lock taken on the
// listening ports before a freeze learns the connections after it).
func (l *Lock) Add(spec Spec) error {
	e, err := buildElements(spec)
	if err != nil {
		return err
	}
	if e.count() == 0 {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return fmt.Errorf("netlock: table %s: the lock is released", l.name)
	}
	var c *nftables.Conn
	if e.count() < 1000 {
		c, err = l.conn()
	} else {
		c, err = dial(l.ns, 64*e.count()+16<<10) // a bigger send buffer
	}
	if err != nil {
		return err
	}
	defer runtime.KeepAlive(l.ns)
	t := &nftables.Table{Name: l.name, Family: nftables.TableFamilyINet}
	for _, s := range []struct {
		set  *nftables.Set
		keys [][]byte
	}{
		{&nftables.Set{Table: t, Name: "conn4", KeyType: connType4, Concatenation: true, KeyByteOrder: binaryutil.BigEndian}, e.conn4},
		{&nftables.Set{Table: t, Name: "conn6", KeyType: connType6, Concatenation: true, KeyByteOrder: binaryutil.BigEndian}, e.conn6},
		{&nftables.Set{Table: t, Name: "listen4", KeyType: listenType4, Concatenation: true, KeyByteOrder: binaryutil.BigEndian}, e.listen4},
		{&nftables.Set{Table: t, Name: "listen6", KeyType: listenType6, Concatenation: true, KeyByteOrder: binaryutil.BigEndian}, e.listen6},
		{&nftables.Set{Table: t, Name: "listenport", KeyType: nftables.TypeInetService, KeyByteOrder: binaryutil.BigEndian}, e.listenPort},
	} {
		for keys := s.keys; len(keys) > 0; {
			n := min(len(keys), maxElemsPerMsg)
			elems := make([]nftables.SetElement, n)
			for i, k := range keys[:n] {
				elems[i].Key = k
			}
			if err := c.SetAddElements(s.set, elems); err != nil {
				return fmt.Errorf("netlock: set %s: %w", s.set.Name, err)
			}
			keys = keys[n:]
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netlock: add to table inet %s: %w", l.name, err)
	}
	return nil
}

// Lift empties the lock's sets: it drops nothing from then on, while its
// table stays until Unlock. Removing a table unregisters its hooks, which
// waits for an RCU grace period (a dozen milliseconds here); emptying sets
// does not, so a migration lifts its lock in its downtime and removes it
// afterwards.
func (l *Lock) Lift() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return nil
	}
	c, err := l.conn()
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: l.name, Family: nftables.TableFamilyINet}
	for _, name := range []string{"conn4", "conn6", "listen4", "listen6", "listenport"} {
		c.FlushSet(&nftables.Set{Table: t, Name: name})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netlock: lift table inet %s: %w", l.name, err)
	}
	return nil
}
