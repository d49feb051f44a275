package netlock

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The table drops packets by looking them up in sets, so that a lock costs
// every packet of the namespace a few hash lookups however many connections
// it covers, and the batch stays small per connection:
//
//	set conn4   ipv4_addr . inet_service . ipv4_addr . inet_service  remote addr, port, local addr, port
//	set conn6   ipv6_addr . inet_service . ipv6_addr . inet_service
//	set listen4 ipv4_addr . inet_service                             local addr, port
//	set listen6 ipv6_addr . inet_service
//	set listenport inet_service                                      listeners on 0.0.0.0 or ::
//
//	chain prerouting, chain input (filter, priority -300):
//	  ip  saddr . tcp sport . ip  daddr . tcp dport @conn4 drop
//	  ip6 saddr . tcp sport . ip6 daddr . tcp dport @conn6 drop
//	  tcp flags & (syn|ack) == syn ip  daddr . tcp dport @listen4 drop
//	  tcp flags & (syn|ack) == syn ip6 daddr . tcp dport @listen6 drop
//	  tcp flags & (syn|ack) == syn tcp dport @listenport drop
//	chain output (filter, priority -300):
//	  ip  daddr . tcp dport . ip  saddr . tcp sport @conn4 drop
//	  ip6 daddr . tcp dport . ip6 saddr . tcp sport @conn6 drop
//
// The output rules build the key in reverse order, so one set serves both
// directions.
//
// Hooks and priorities. Incoming packets are dropped in prerouting: that is
// before routing, so they are caught even when the service address has
// already been taken off this host (routing would then forward them or answer
// with ICMP). Priority -300 (raw) is before conntrack (-200), so a dropped
// packet never touches connection tracking state (a peer's RST or FIN would
// otherwise move a tracked connection towards closing), and before
// destination NAT (-100). That last point means prerouting sees addresses as
// they arrive, not as the socket sees them when the namespace itself
// rewrites them (REDIRECT to a local proxy, DNAT to a local address). The
// input chain, at the same priority but after NAT and routing, catches those
// with the same rules. Outgoing packets are dropped in output at -300:
// before conntrack and NAT, where the addresses are still the socket's own.
// Priority among filter tables does not matter for correctness: a drop in
// any base chain is final, whatever another table accepts.
const lockPriority = -300

// tcpFlagsOffset is the offset of the flags byte in the TCP header, and
// tcpSYN and tcpACK are two of its bits.
const (
	tcpFlagsOffset = 13
	tcpSYN         = 0x02
	tcpACK         = 0x10
)

// Registers: lookups read their key from consecutive 32-bit registers, one
// or more per concatenated field, with each field padded to 4 bytes (a
// payload load of 2 bytes zeroes the rest of its register).
const (
	reg32First = 8 // NFT_REG32_00
	regVerdict = 1 // NFT_REG_1, for single comparisons
)

var (
	connType4   = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService, nftables.TypeIPAddr, nftables.TypeInetService)
	connType6   = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService, nftables.TypeIP6Addr, nftables.TypeInetService)
	listenType4 = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)
	listenType6 = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService)
)

// elements is a Spec turned into set keys, without duplicates.
type elements struct {
	conn4, conn6, listen4, listen6, listenPort [][]byte
}

func (e *elements) count() int {
	return len(e.conn4) + len(e.conn6) + len(e.listen4) + len(e.listen6) + len(e.listenPort)
}

// buildElements checks spec and turns it into set keys. IPv4-mapped IPv6
// addresses (a dual-stack socket talking IPv4) become IPv4: that is what
// goes on the wire.
func buildElements(spec Spec) (*elements, error) {
	e := &elements{}
	seen := make(map[string]bool)
	add := func(dst *[][]byte, key []byte) {
		k := string(key)
		if !seen[k] {
			seen[k] = true
			*dst = append(*dst, key)
		}
	}
	for _, c := range spec.Conns {
		l, r := unmapAddrPort(c.Local), unmapAddrPort(c.Remote)
		if !l.IsValid() || !r.IsValid() || l.Port() == 0 || r.Port() == 0 ||
			l.Addr().IsUnspecified() || r.Addr().IsUnspecified() {
			return nil, fmt.Errorf("netlock: connection %v -> %v: incomplete address", c.Local, c.Remote)
		}
		if l.Addr().Is4() != r.Addr().Is4() {
			return nil, fmt.Errorf("netlock: connection %v -> %v: mixed address families", c.Local, c.Remote)
		}
		key := appendField(nil, r.Addr().AsSlice())
		key = appendField(key, port(r.Port()))
		key = appendField(key, l.Addr().AsSlice())
		key = appendField(key, port(l.Port()))
		if l.Addr().Is4() {
			add(&e.conn4, key)
		} else {
			add(&e.conn6, key)
		}
	}
	for _, ap := range spec.Listeners {
		ap = unmapAddrPort(ap)
		if !ap.IsValid() || ap.Port() == 0 {
			return nil, fmt.Errorf("netlock: listener %v: incomplete address", ap)
		}
		switch {
		case ap.Addr().IsUnspecified():
			add(&e.listenPort, port(ap.Port()))
		case ap.Addr().Is4():
			add(&e.listen4, appendField(appendField(nil, ap.Addr().AsSlice()), port(ap.Port())))
		default:
			add(&e.listen6, appendField(appendField(nil, ap.Addr().AsSlice()), port(ap.Port())))
		}
	}
	return e, nil
}

func unmapAddrPort(ap netip.AddrPort) netip.AddrPort {
	if !ap.IsValid() {
		return ap
	}
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}

func port(p uint16) []byte { return []byte{byte(p >> 8), byte(p)} }

// appendField appends one field of a concatenated key, padded to the
// 4-byte register size.
func appendField(key, field []byte) []byte {
	key = append(key, field...)
	pad := (4 - len(field)%4) % 4
	return append(key, make([]byte, pad)...)
}

// maxElemsPerMsg keeps each set element message's nested attribute under the
// 64 KiB a netlink attribute length can express (an IPv6 connection takes
// about 60 bytes).
const maxElemsPerMsg = 512

// build queues the whole table on c: the table itself (created exclusively:
// an existing table of that name fails the batch), its sets with their
// elements, chains and rules. Nothing reaches the kernel before c.Flush.
func build(c *nftables.Conn, name string, e *elements) error {
	t := c.CreateTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet})

	// Set IDs only need to be unique within the batch; set them here rather
	// than let the library draw them from its unsynchronized global counter.
	sets := []struct {
		set  *nftables.Set
		keys [][]byte
	}{
		{&nftables.Set{Table: t, ID: 1, Name: "conn4", KeyType: connType4, Concatenation: true, KeyByteOrder: binaryutil.BigEndian}, e.conn4},
		{&nftables.Set{Table: t, ID: 2, Name: "conn6", KeyType: connType6, Concatenation: true, KeyByteOrder: binaryutil.BigEndian}, e.conn6},
		{&nftables.Set{Table: t, ID: 3, Name: "listen4", KeyType: listenType4, Concatenation: true, KeyByteOrder: binaryutil.BigEndian}, e.listen4},
		{&nftables.Set{Table: t, ID: 4, Name: "listen6", KeyType: listenType6, Concatenation: true, KeyByteOrder: binaryutil.BigEndian}, e.listen6},
		{&nftables.Set{Table: t, ID: 5, Name: "listenport", KeyType: nftables.TypeInetService, KeyByteOrder: binaryutil.BigEndian}, e.listenPort},
	}
	for _, s := range sets {
		if err := c.AddSet(s.set, nil); err != nil {
			return fmt.Errorf("netlock: set %s: %w", s.set.Name, err)
		}
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
	conn4, conn6, listen4, listen6, listenPort := sets[0].set, sets[1].set, sets[2].set, sets[3].set, sets[4].set

	filter := func(name string, hook *nftables.ChainHook) *nftables.Chain {
		return c.AddChain(&nftables.Chain{
			Name:     name,
			Table:    t,
			Type:     nftables.ChainTypeFilter,
			Hooknum:  hook,
			Priority: nftables.ChainPriorityRef(lockPriority),
		})
	}
	for _, ch := range []*nftables.Chain{
		filter("prerouting", nftables.ChainHookPrerouting),
		filter("input", nftables.ChainHookInput),
	} {
		for _, exprs := range [][]expr.Any{
			connRule(unix.NFPROTO_IPV4, false, conn4),
			connRule(unix.NFPROTO_IPV6, false, conn6),
			synRule(unix.NFPROTO_IPV4, listen4),
			synRule(unix.NFPROTO_IPV6, listen6),
			synRule(unix.NFPROTO_UNSPEC, listenPort),
		} {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs})
		}
	}
	out := filter("output", nftables.ChainHookOutput)
	for _, exprs := range [][]expr.Any{
		connRule(unix.NFPROTO_IPV4, true, conn4),
		connRule(unix.NFPROTO_IPV6, true, conn6),
	} {
		c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: exprs})
	}
	return nil
}

// addrs gives the network header offset of the source address and the
// address length of an IP family; the destination follows the source.
func addrs(nfproto int) (off, n uint32) {
	if nfproto == unix.NFPROTO_IPV4 {
		return 12, 4
	}
	return 8, 16
}

// connRule matches a TCP packet of a connection in set s: incoming when
// out is false (key: saddr . sport . daddr . dport), outgoing when true
// (daddr . dport . saddr . sport), which puts the remote end first either way.
func connRule(nfproto int, out bool, s *nftables.Set) []expr.Any {
	saddr, alen := addrs(nfproto)
	daddr := saddr + alen
	var sport, dport uint32 = 0, 2
	if out {
		saddr, daddr = daddr, saddr
		sport, dport = dport, sport
	}
	exprs := matchTCP(nfproto)
	reg := uint32(reg32First)
	for _, f := range []struct {
		base     expr.PayloadBase
		off, len uint32
	}{
		{expr.PayloadBaseNetworkHeader, saddr, alen},
		{expr.PayloadBaseTransportHeader, sport, 2},
		{expr.PayloadBaseNetworkHeader, daddr, alen},
		{expr.PayloadBaseTransportHeader, dport, 2},
	} {
		exprs = append(exprs, &expr.Payload{
			OperationType: expr.PayloadLoad,
			DestRegister:  reg,
			Base:          f.base,
			Offset:        f.off,
			Len:           f.len,
		})
		reg += (f.len + 3) / 4
	}
	return append(exprs, lookupDrop(s)...)
}

// synRule matches a connection request (SYN without ACK) to a listener in
// s: keyed daddr . dport for an IP family, dport alone for NFPROTO_UNSPEC.
func synRule(nfproto int, s *nftables.Set) []expr.Any {
	exprs := append(matchTCP(nfproto),
		&expr.Payload{
			OperationType: expr.PayloadLoad,
			DestRegister:  regVerdict,
			Base:          expr.PayloadBaseTransportHeader,
			Offset:        tcpFlagsOffset,
			Len:           1,
		},
		&expr.Bitwise{
			SourceRegister: regVerdict,
			DestRegister:   regVerdict,
			Len:            1,
			Mask:           []byte{tcpSYN | tcpACK},
			Xor:            []byte{0},
		},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regVerdict, Data: []byte{tcpSYN}},
	)
	reg := uint32(reg32First)
	if nfproto != unix.NFPROTO_UNSPEC {
		saddr, alen := addrs(nfproto)
		exprs = append(exprs, &expr.Payload{
			OperationType: expr.PayloadLoad,
			DestRegister:  reg,
			Base:          expr.PayloadBaseNetworkHeader,
			Offset:        saddr + alen,
			Len:           alen,
		})
		reg += alen / 4
	}
	exprs = append(exprs, &expr.Payload{
		OperationType: expr.PayloadLoad,
		DestRegister:  reg,
		Base:          expr.PayloadBaseTransportHeader,
		Offset:        2,
		Len:           2,
	})
	return append(exprs, lookupDrop(s)...)
}

// matchTCP matches TCP packets of an IP family (meta nfproto, meta
// l4proto), or of either family for NFPROTO_UNSPEC.
func matchTCP(nfproto int) []expr.Any {
	var exprs []expr.Any
	if nfproto != unix.NFPROTO_UNSPEC {
		exprs = append(exprs,
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: regVerdict},
			&expr.Cmp{Op: expr.CmpOpEq, Register: regVerdict, Data: []byte{byte(nfproto)}},
		)
	}
	return append(exprs,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regVerdict},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regVerdict, Data: []byte{unix.IPPROTO_TCP}},
	)
}

// lookupDrop ends a rule: look the key up in s, count, drop. The counter
// shows in `nft list table inet NAME` how many packets the lock held back.
func lookupDrop(s *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Lookup{SourceRegister: reg32First, SetName: s.Name, SetID: s.ID},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}
