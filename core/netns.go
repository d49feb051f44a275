package core

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"
)

// NetNamespace is the configuration of the container's own network
// namespace, which the restore makes anew: its interfaces (loopback and
// veth only; a dump refuses any other kind), their addresses, the routes
// added to it (not those the kernel makes for an address), and the
// sysctls of NetSysctls. Neighbours, firewall rules and policy routing
// rules are not carried.
type NetNamespace struct {
	Links  []NetLink  `json:"links"`
	Routes []NetRoute `json:"routes,omitempty"`
	// Sysctls are files under /proc/sys, by their path below it
	// ("net/ipv4/ip_forward"), as read.
	Sysctls map[string]string `json:"sysctls,omitempty"`
}

// Kinds of NetLink.
const (
	LinkLoopback = "loopback"
	LinkVeth     = "veth"
)

// NetLink is one interface of the namespace.
type NetLink struct {
	Name  string    `json:"name"`
	Kind  string    `json:"kind"` // LinkLoopback or LinkVeth
	MAC   string    `json:"mac,omitempty"`
	MTU   int       `json:"mtu"`
	Up    bool      `json:"up"`
	Addrs []NetAddr `json:"addrs,omitempty"`
	// Peer is, for a veth, the name of its other end in the dumping
	// migrate's network namespace; "" if the other end was elsewhere.
	Peer string `json:"peer,omitempty"`
}

// NetAddr is an address of a link.
type NetAddr struct {
	Prefix string `json:"prefix"` // with its length: "10.0.0.2/24"
	Scope  uint8  `json:"scope"`  // RT_SCOPE_*
	// NoDAD: an IPv6 address added without duplicate address detection.
	NoDAD bool `json:"nodad,omitempty"`
	// Broadcast is an IPv4 address's broadcast address, if it has one.
	Broadcast string `json:"broadcast,omitempty"`
	// Label is an IPv4 address's label ("eth0:1"), if not the link's name.
	Label string `json:"label,omitempty"`
}

// String is the address as a check compares it.
func (a NetAddr) String() string {
	s := fmt.Sprintf("%s scope %d", a.Prefix, a.Scope)
	if a.NoDAD {
		s += " nodad"
	}
	if a.Broadcast != "" {
		s += " brd " + a.Broadcast
	}
	if a.Label != "" {
		s += " label " + a.Label
	}
	return s
}

// NetRoute is a route of the main table.
type NetRoute struct {
	Dst      string `json:"dst"`               // prefix; 0.0.0.0/0 or ::/0 for a default route
	Gateway  string `json:"gateway,omitempty"` // "" for a route through the link alone
	Dev      string `json:"dev,omitempty"`     // the link's name
	Src      string `json:"src,omitempty"`     // preferred source address
	Metric   uint32 `json:"metric,omitempty"`
	Protocol uint8  `json:"protocol"` // RTPROT_*
	Scope    uint8  `json:"scope"`    // RT_SCOPE_*
	Type     uint8  `json:"type"`     // RTN_*
}

// String is the route as `ip route` would show it, roughly.
func (r NetRoute) String() string {
	s := r.Dst
	if r.Gateway != "" {
		s += " via " + r.Gateway
	}
	if r.Dev != "" {
		s += " dev " + r.Dev
	}
	if r.Src != "" {
		s += " src " + r.Src
	}
	return s + fmt.Sprintf(" metric %d proto %d scope %d type %d", r.Metric, r.Protocol, r.Scope, r.Type)
}

// NetSysctlPattern matches the sysctls of a network namespace the dump
// carries, below /proc/sys: forwarding, and IPv6 on or off, globally and
// per link ("all", "default" or a link's name).
var NetSysctlPattern = regexp.MustCompile(`^net/(ipv4/ip_forward|ipv4/conf/[^/]+/forwarding|ipv6/conf/[^/]+/(forwarding|disable_ipv6))$`)

// Bounds of a network namespace in an image.
const (
	maxNetLinks  = 1024
	maxNetAddrs  = 4096
	maxNetRoutes = 1 << 16
)

// linkName matches what the kernel takes as an interface name.
var linkName = regexp.MustCompile(`^[A-Za-z0-9_.@+-][A-Za-z0-9_.@:+-]{0,14}$`)

// ValidLinkName says whether s can name an interface.
func ValidLinkName(s string) bool { return linkName.MatchString(s) && s != "." && s != ".." }

func validateNet(n *NetNamespace) error {
	if len(n.Links) > maxNetLinks || len(n.Routes) > maxNetRoutes {
		return fmt.Errorf("network namespace: %d links, %d routes", len(n.Links), len(n.Routes))
	}
	names := map[string]bool{}
	addrs := 0
	loopbacks := 0
	for _, l := range n.Links {
		if !ValidLinkName(l.Name) || names[l.Name] {
			return fmt.Errorf("network namespace: link name %q invalid or listed twice", l.Name)
		}
		names[l.Name] = true
		switch l.Kind {
		case LinkLoopback:
			loopbacks++
			if l.Name != "lo" || l.Peer != "" {
				return fmt.Errorf("network namespace: loopback link %q", l.Name)
			}
		case LinkVeth:
			if l.Peer != "" && !ValidLinkName(l.Peer) {
				return fmt.Errorf("network namespace: link %s: peer name %q", l.Name, l.Peer)
			}
			if hw, err := net.ParseMAC(l.MAC); err != nil || len(hw) != 6 || hw[0]&1 != 0 {
				return fmt.Errorf("network namespace: link %s: MAC address %q", l.Name, l.MAC)
			}
		default:
			return fmt.Errorf("network namespace: link %s of kind %q", l.Name, l.Kind)
		}
		if l.MTU < 68 || l.MTU > 1<<20 {
			return fmt.Errorf("network namespace: link %s: MTU %d", l.Name, l.MTU)
		}
		addrs += len(l.Addrs)
		if addrs > maxNetAddrs {
			return fmt.Errorf("network namespace: more than %d addresses", maxNetAddrs)
		}
		for _, a := range l.Addrs {
			p, err := netip.ParsePrefix(a.Prefix)
			if err != nil {
				return fmt.Errorf("network namespace: link %s: address %q: %w", l.Name, a.Prefix, err)
			}
			if b, err := netip.ParseAddr(a.Broadcast); a.Broadcast != "" && (err != nil || !b.Is4() || !p.Addr().Is4()) {
				return fmt.Errorf("network namespace: link %s: address %s: broadcast %q", l.Name, a.Prefix, a.Broadcast)
			}
			if a.Label != "" && (!ValidLinkName(a.Label) || !strings.HasPrefix(a.Label, l.Name) || !p.Addr().Is4()) {
				return fmt.Errorf("network namespace: link %s: address %s: label %q", l.Name, a.Prefix, a.Label)
			}
		}
	}
	if loopbacks != 1 {
		return fmt.Errorf("network namespace: %d loopback links", loopbacks)
	}
	for _, r := range n.Routes {
		dst, err := netip.ParsePrefix(r.Dst)
		if err != nil {
			return fmt.Errorf("network namespace: route %s: %w", r, err)
		}
		if r.Dev != "" && !names[r.Dev] {
			return fmt.Errorf("network namespace: route %s through a link it does not have", r)
		}
		for _, a := range []string{r.Gateway, r.Src} {
			if a == "" {
				continue
			}
			ip, err := netip.ParseAddr(a)
			if err != nil || ip.Is4() != dst.Addr().Is4() {
				return fmt.Errorf("network namespace: route %s: address %q", r, a)
			}
		}
	}
	for name, v := range n.Sysctls {
		if !NetSysctlPattern.MatchString(name) || strings.Contains(name, "..") || len(v) > maxSysctlSize || strings.ContainsAny(v, "\x00\n") {
			return fmt.Errorf("network namespace: sysctl %q = %q", name, v)
		}
		// A link's own: of a link the namespace has.
		if f := strings.Split(name, "/"); len(f) == 5 && f[3] != "all" && f[3] != "default" && !names[f[3]] {
			return fmt.Errorf("network namespace: sysctl %q of a link it does not have", name)
		}
	}
	return nil
}
