package cluster

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// announce sends one unsolicited ARP request for ip (sender and target
// both ip, from the interface's MAC, to the broadcast address) on the
// named interface of the calling thread's network namespace: what `arping
// -U -c 1` sends, without its one-second wait for answers. Neighbours
// that have an entry for ip take the new MAC at once.
func announce(ifname string, ip netip.Addr) error {
	if !ip.Is4() {
		return fmt.Errorf("announce %s: not IPv4", ip)
	}
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return err
	}
	if len(ifc.HardwareAddr) != 6 {
		return fmt.Errorf("announce on %s: MAC %v is not Ethernet", ifname, ifc.HardwareAddr)
	}
	// Protocol 0: this socket sends only, it receives nothing.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("announce: %w", err)
	}
	defer unix.Close(fd)
	bcast := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	ip4 := ip.As4()
	frame := make([]byte, 60) // the Ethernet minimum, zero-padded
	copy(frame[0:6], bcast)
	copy(frame[6:12], ifc.HardwareAddr)
	binary.BigEndian.PutUint16(frame[12:14], unix.ETH_P_ARP)
	arp := frame[14:]
	binary.BigEndian.PutUint16(arp[0:2], 1) // hardware: Ethernet
	binary.BigEndian.PutUint16(arp[2:4], unix.ETH_P_IP)
	arp[4], arp[5] = 6, 4
	binary.BigEndian.PutUint16(arp[6:8], 1) // request
	copy(arp[8:14], ifc.HardwareAddr)
	copy(arp[14:18], ip4[:])
	// target hardware address: zero
	copy(arp[24:28], ip4[:])
	var proto [2]byte
	binary.BigEndian.PutUint16(proto[:], unix.ETH_P_ARP)
	sa := &unix.SockaddrLinklayer{
		Protocol: binary.NativeEndian.Uint16(proto[:]), // network order in memory
		Ifindex:  ifc.Index,
		Halen:    6,
	}
	copy(sa.Addr[:], bcast)
	if err := unix.Sendto(fd, frame, 0, sa); err != nil {
		return fmt.Errorf("announce %s on %s: %w", ip, ifname, err)
	}
	return nil
}
