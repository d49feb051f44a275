package netaddr

import (
	"errors"
	"fmt"
	"os"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ErrNoLink is the error (under *Error) for a link the namespace does not
// have.
var ErrNoLink = errors.New("no such link")

// Error is a failed operation on a service address.
type Error struct {
	Op   string // "add", "del", "has" or "announce"
	Addr Addr
	// Err says why: ErrNoLink; an errno (errors.Is(err, unix.EPERM)),
	// wrapped with the netlink request or system call that failed; or
	// what is wrong with an Addr made without Parse.
	Err error
}

func (e *Error) Error() string {
	return fmt.Sprintf("netaddr: %s %v on %s: %v", e.Op, e.Addr.Prefix, e.Addr.Link, e.Err)
}

// Unwrap returns the reason.
func (e *Error) Unwrap() error { return e.Err }

// Handle does the operations over sockets it keeps open, which saves each
// call opening its own (some 15 µs). It works in the network namespace of
// the thread that called Open, whichever goroutine uses it later. Its
// methods may be called concurrently; Close must come after them all.
type Handle struct {
	nl *netlink.Conn
	// The sockets Announce sends on, -1 until made: by Open, so that they
	// are in the handle's namespace, or on first use by a handle of the
	// package-level functions (lazy), which live for one call on the
	// caller's thread. arpErr and naErr say why Open could not make one
	// (a kernel without IPv6 has no ICMPv6 socket).
	arp, na       int
	arpErr, naErr error
	lazy          bool
}

// Open opens a Handle in the calling thread's network namespace.
func Open() (*Handle, error) {
	h, err := open()
	if err != nil {
		return nil, err
	}
	h.arp, h.arpErr = arpSocket()
	h.na, h.naErr = naSocket()
	return h, nil
}

// open makes a handle with the rtnetlink socket alone.
func open() (*Handle, error) {
	c, err := dialRoute()
	if err != nil {
		return nil, err
	}
	return &Handle{nl: c, arp: -1, na: -1}, nil
}

// Close closes the handle's sockets. It does not wait for the kernel to
// be done with its packet socket (see closePacketSocket).
func (h *Handle) Close() error {
	err := h.nl.Close()
	if h.arp >= 0 {
		closePacketSocket(h.arp)
		h.arp = -1
	}
	if h.na >= 0 {
		if cerr := unix.Close(h.na); err == nil && cerr != nil {
			err = os.NewSyscallError("close", cerr)
		}
		h.na = -1
	}
	return err
}

// link checks a and looks up its link.
func (h *Handle) link(a Addr) (link, error) {
	if err := a.check(); err != nil {
		return link{}, err
	}
	return getLink(h.nl, a.Link)
}

// Add puts a on its link, and reports whether it did: false, with no
// error, if a was there already. An IPv6 address is added without
// duplicate address detection (IFA_F_NODAD): it is usable at once, never
// "tentative". An IPv4 address is added as the kernel decides: primary,
// unless the link has a primary address with the same prefix length and
// subnet, in which case a becomes that address's secondary, and is
// removed with it unless net.ipv4.conf.LINK.promote_secondaries is set. A
// /32 (Parse's default) is never a secondary; see the package comment.
func (h *Handle) Add(a Addr) (added bool, err error) {
	l, err := h.link(a)
	if err != nil {
		return false, &Error{"add", a, err}
	}
	var flags uint32
	if a.Prefix.Addr().Is6() {
		flags = unix.IFA_F_NODAD
	}
	err = newAddr(h.nl, l.index, a.Prefix, flags)
	if errors.Is(err, unix.EEXIST) {
		// EEXIST also answers an IPv6 address that is there with another
		// prefix length: that is not a.
		have, ok, ferr := findAddr(h.nl, l.index, a.Prefix.Addr())
		switch {
		case ferr != nil:
			err = fmt.Errorf("%w; then %w", err, ferr)
		case ok && have.prefix == a.Prefix:
			return false, nil
		case ok:
			err = fmt.Errorf("%w: the link has %v", err, have.prefix)
		}
	}
	if err != nil {
		return false, &Error{"add", a, err}
	}
	return true, nil
}

// Del removes a (address and prefix length) from its link, and reports
// whether it did: false, with no error, if a was not there.
func (h *Handle) Del(a Addr) (removed bool, err error) {
	l, err := h.link(a)
	if err != nil {
		return false, &Error{"del", a, err}
	}
	err = delAddr(h.nl, l.index, a.Prefix)
	if errors.Is(err, unix.EADDRNOTAVAIL) {
		return false, nil
	}
	if err != nil {
		return false, &Error{"del", a, err}
	}
	return true, nil
}

// Has reports whether a (address and prefix length) is on its link.
func (h *Handle) Has(a Addr) (bool, error) {
	have, ok, err := h.find(a)
	if err != nil {
		return false, &Error{"has", a, err}
	}
	return ok && have.prefix == a.Prefix, nil
}

// find looks for a's address on its link, with any prefix length.
func (h *Handle) find(a Addr) (ifaddr, bool, error) {
	l, err := h.link(a)
	if err != nil {
		return ifaddr{}, false, err
	}
	return findAddr(h.nl, l.index, a.Prefix.Addr())
}

// Add puts a on its link in the calling thread's network namespace; see
// Handle.Add.
func Add(a Addr) (added bool, err error) {
	h, err := open()
	if err != nil {
		return false, &Error{"add", a, err}
	}
	defer h.Close()
	return h.Add(a)
}

// Del removes a from its link in the calling thread's network namespace;
// see Handle.Del.
func Del(a Addr) (removed bool, err error) {
	h, err := open()
	if err != nil {
		return false, &Error{"del", a, err}
	}
	defer h.Close()
	return h.Del(a)
}

// Has reports whether a is on its link in the calling thread's network
// namespace.
func Has(a Addr) (bool, error) {
	h, err := open()
	if err != nil {
		return false, &Error{"has", a, err}
	}
	defer h.Close()
	return h.Has(a)
}

// Announce tells the neighbours on a's link, in the calling thread's
// network namespace, that a is here; see Handle.Announce.
func Announce(a Addr) error {
	h, err := open()
	if err != nil {
		return &Error{"announce", a, err}
	}
	defer h.Close()
	h.lazy = true
	return h.Announce(a)
}
