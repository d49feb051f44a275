package netaddr

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Addr is a service address: a prefix on a link, such as 10.0.0.100/32 on
// eth0. The prefix keeps its host bits: 10.0.0.100/24 is the address
// 10.0.0.100 with a 24-bit subnet, as `ip addr add` takes it.
type Addr struct {
	Prefix netip.Prefix
	Link   string // the link's name in the namespace, at most 15 bytes
}

// String returns a in the form Parse reads: "ADDR/PLEN@LINK".
func (a Addr) String() string {
	return a.Prefix.String() + "@" + a.Link
}

// ParseError is a string Parse rejects.
type ParseError struct {
	Input string // what Parse was given
	Part  string // the part that is wrong: "address", "prefix length" or "link"
	Err   error  // what is wrong with it
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("netaddr: bad %s in %q (want ADDR[/PLEN]@LINK): %v", e.Part, e.Input, e.Err)
}

// Unwrap returns the reason.
func (e *ParseError) Unwrap() error { return e.Err }

// Parse reads "ADDR/PLEN@LINK", e.g. "10.231.0.100/32@eth0" or
// "fd00::100/128@eth0". Without /PLEN the prefix is the address alone: /32
// for IPv4, /128 for IPv6.
func Parse(s string) (Addr, error) {
	// An address never holds '@' (a link name may).
	p, link, ok := strings.Cut(s, "@")
	if !ok {
		return Addr{}, &ParseError{s, "link", errors.New("no '@'")}
	}
	if err := checkLink(link); err != nil {
		return Addr{}, &ParseError{s, "link", err}
	}
	as, bs, hasBits := strings.Cut(p, "/")
	ip, err := netip.ParseAddr(as)
	if err != nil {
		// netip's error quotes the text it was given.
		return Addr{}, &ParseError{s, "address", err}
	}
	if err := checkIP(ip); err != nil {
		return Addr{}, &ParseError{s, "address", err}
	}
	bits := ip.BitLen()
	if hasBits {
		if bits, err = parseBits(bs, ip.BitLen()); err != nil {
			return Addr{}, &ParseError{s, "prefix length", err}
		}
	}
	return Addr{Prefix: netip.PrefixFrom(ip, bits), Link: link}, nil
}

// parseBits reads a prefix length: decimal digits without a sign or leading
// zeros, at most max.
func parseBits(s string, max int) (int, error) {
	if s == "" {
		return 0, errors.New("empty")
	}
	if len(s) > 3 || strings.Trim(s, "0123456789") != "" || len(s) > 1 && s[0] == '0' {
		return 0, fmt.Errorf("%q is not a decimal number without leading zeros", s)
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, err
	}
	if n > max {
		return 0, fmt.Errorf("%d is more than the address's %d bits", n, max)
	}
	return n, nil
}

// checkIP rejects what cannot be a service address.
func checkIP(ip netip.Addr) error {
	switch {
	case ip.Zone() != "":
		return fmt.Errorf("%v has a zone: the link is given after '@'", ip)
	case ip.Is4In6():
		return fmt.Errorf("%v is an IPv4-mapped IPv6 address: write %v", ip, ip.Unmap())
	case ip.IsUnspecified():
		return fmt.Errorf("%v is unspecified", ip)
	case ip.IsMulticast():
		return fmt.Errorf("%v is multicast", ip)
	}
	return nil
}

// checkLink rejects what the kernel would not take as a link name
// (dev_valid_name): empty, longer than IFNAMSIZ-1, "." or "..", or holding
// NUL, '/', ':' or what the kernel's isspace takes for white space.
func checkLink(name string) error {
	switch {
	case name == "":
		return errors.New("empty")
	case len(name) > 15:
		return fmt.Errorf("%q is longer than 15 bytes", name)
	case name == "." || name == "..":
		return fmt.Errorf("%q is not a link name", name)
	}
	for _, c := range []byte(name) {
		switch c {
		case 0, '/', ':', ' ', '\t', '\n', '\v', '\f', '\r', 0xa0:
			return fmt.Errorf("%q holds %q", name, c)
		}
	}
	return nil
}

// check reports why a, which may have been built without Parse, cannot be
// used.
func (a Addr) check() error {
	if !a.Prefix.IsValid() {
		return errors.New("invalid prefix")
	}
	if err := checkIP(a.Prefix.Addr()); err != nil {
		return err
	}
	if err := checkLink(a.Link); err != nil {
		return fmt.Errorf("link: %w", err)
	}
	return nil
}
