package netconf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// What Read does not carry and a namespace may hold all the same: policy
// routing rules, firewall rules (nftables, legacy iptables), queueing
// disciplines, permanent neighbour entries. Silently lost, they would
// make the restored container another one (a rule gone, a port open that
// was closed): Uncarried refuses them, naming the first it finds.

// Rule attributes (include/uapi/linux/fib_rules.h) that select packets:
// a rule with any of them is the operator's own.
const (
	fraDst        = 1
	fraSrc        = 2
	fraIifname    = 3
	fraGoto       = 4
	fraPriority   = 6
	fraFwmark     = 10
	fraTunID      = 12
	fraTable      = 15
	fraOifname    = 17
	fraL3mdev     = 19
	fraUIDRange   = 20
	fraIPProto    = 22
	fraSportRange = 23
	fraDportRange = 24
	frActToTbl    = 1 // FR_ACT_TO_TBL
	nudPermanent  = 0x80
	sizeofTcMsg   = 20 // struct tcmsg
)

// defaultRule says whether a rule (family, priority, table) is one a new
// namespace has by itself: 0 local, 32766 main, and for IPv4 32767
// default.
func defaultRule(family byte, prio, table uint32) bool {
	switch {
	case prio == 0 && table == unix.RT_TABLE_LOCAL,
		prio == 32766 && table == unix.RT_TABLE_MAIN:
		return true
	case prio == 32767 && table == unix.RT_TABLE_DEFAULT:
		return family == unix.AF_INET
	}
	return false
}

// Uncarried refuses (an *UnsupportedError) what the calling thread's
// network namespace holds that Read does not carry: a policy routing
// rule but the default ones, an nftables table but those ours says are
// migrate's own (its network lock), a legacy iptables table, a queueing
// discipline other than noqueue, a permanent neighbour entry.
func Uncarried(ours func(table string) bool) error {
	c, err := dial()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := refuseRules(c); err != nil {
		return err
	}
	if err := refuseQdiscs(c); err != nil {
		return err
	}
	if err := refuseNeighbours(c); err != nil {
		return err
	}
	return refuseFirewall(ours)
}

func refuseRules(c *netlink.Conn) error {
	for _, fam := range []byte{unix.AF_INET, unix.AF_INET6} {
		req := make([]byte, 12) // struct fib_rule_hdr
		req[0] = fam
		msgs, err := c.Execute(netlink.Message{Header: netlink.Header{Type: unix.RTM_GETRULE, Flags: netlink.Request | netlink.Dump}, Data: req})
		if errors.Is(err, unix.EAFNOSUPPORT) {
			continue
		}
		if err != nil {
			return fmt.Errorf("RTM_GETRULE: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type != unix.RTM_NEWRULE || len(m.Data) < 12 {
				continue
			}
			b := m.Data
			dstLen, srcLen, tos, table, action := b[1], b[2], b[3], uint32(b[4]), b[7]
			ad, err := netlink.NewAttributeDecoder(b[12:])
			if err != nil {
				return fmt.Errorf("RTM_NEWRULE: %w", err)
			}
			var prio uint32
			selects := false
			for ad.Next() {
				switch ad.Type() {
				case fraPriority:
					prio = ad.Uint32()
				case fraTable:
					table = ad.Uint32()
				case fraDst, fraSrc, fraIifname, fraGoto, fraFwmark, fraTunID, fraOifname, fraL3mdev, fraUIDRange, fraIPProto, fraSportRange, fraDportRange:
					selects = true
				}
			}
			if err := ad.Err(); err != nil {
				return fmt.Errorf("RTM_NEWRULE: %w", err)
			}
			if selects || dstLen != 0 || srcLen != 0 || tos != 0 || action != frActToTbl || !defaultRule(fam, prio, table) {
				v := "IPv4"
				if fam == unix.AF_INET6 {
					v = "IPv6"
				}
				return &UnsupportedError{Kind: fmt.Sprintf("an %s policy routing rule (ip rule, priority %d, table %d) is not carried", v, prio, table)}
			}
		}
	}
	return nil
}

func refuseQdiscs(c *netlink.Conn) error {
	msgs, err := c.Execute(netlink.Message{Header: netlink.Header{Type: unix.RTM_GETQDISC, Flags: netlink.Request | netlink.Dump},
		Data: make([]byte, sizeofTcMsg)})
	if err != nil {
		return fmt.Errorf("RTM_GETQDISC: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWQDISC || len(m.Data) < sizeofTcMsg {
			continue
		}
		ifindex := int32(binary.NativeEndian.Uint32(m.Data[4:]))
		ad, err := netlink.NewAttributeDecoder(m.Data[sizeofTcMsg:])
		if err != nil {
			return fmt.Errorf("RTM_NEWQDISC: %w", err)
		}
		var kind string
		for ad.Next() {
			if ad.Type() == unix.TCA_KIND {
				kind = ad.String()
			}
		}
		if err := ad.Err(); err != nil {
			return fmt.Errorf("RTM_NEWQDISC: %w", err)
		}
		if kind != "noqueue" {
			return &UnsupportedError{Kind: fmt.Sprintf("a %s queueing discipline (tc, interface %d) is not carried", kind, ifindex)}
		}
	}
	return nil
}

func refuseNeighbours(c *netlink.Conn) error {
	for _, fam := range []byte{unix.AF_INET, unix.AF_INET6} {
		req := make([]byte, unix.SizeofNdMsg)
		req[0] = fam
		msgs, err := c.Execute(netlink.Message{Header: netlink.Header{Type: unix.RTM_GETNEIGH, Flags: netlink.Request | netlink.Dump}, Data: req})
		if errors.Is(err, unix.EAFNOSUPPORT) {
			continue
		}
		if err != nil {
			return fmt.Errorf("RTM_GETNEIGH: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type != unix.RTM_NEWNEIGH || len(m.Data) < unix.SizeofNdMsg {
				continue
			}
			if state := binary.NativeEndian.Uint16(m.Data[8:]); state&nudPermanent != 0 {
				return &UnsupportedError{Kind: "a permanent neighbour entry (ip neigh ... permanent) is not carried"}
			}
		}
	}
	return nil
}

func refuseFirewall(ours func(string) bool) error {
	// Legacy iptables: the tables instantiated in this namespace.
	for _, f := range []string{"ip_tables_names", "ip6_tables_names", "arp_tables_names"} {
		b, err := os.ReadFile("/proc/thread-self/net/" + f)
		if err != nil {
			continue // the module is not loaded: no table
		}
		if names := strings.Fields(string(b)); len(names) > 0 {
			return &UnsupportedError{Kind: fmt.Sprintf("firewall tables (legacy iptables %s: %s) are not carried", strings.TrimSuffix(f, "_names"), strings.Join(names, " "))}
		}
	}
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer conn.CloseLasting()
	tables, err := conn.ListTables()
	if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ENOENT) {
		return nil // no nftables here: no table
	}
	if err != nil {
		return fmt.Errorf("nftables: list tables: %w", err)
	}
	for _, t := range tables {
		if !ours(t.Name) {
			return &UnsupportedError{Kind: fmt.Sprintf("firewall rules (nftables table %s) are not carried", t.Name)}
		}
	}
	return nil
}
