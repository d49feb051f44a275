package source

import (
	"net"
	"net/netip"
	"os"
	"testing"
)

func TestParseTCPTable(t *testing.T) {
	tab := []byte(`  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000002 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0300007F:C350 03 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 100 0 0 10 0
`)
	es, err := parseTCPTable(tab)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 {
		t.Fatalf("%d entries", len(es))
	}
	if es[0].local != netip.MustParseAddrPort("127.0.0.1:8080") || es[0].state != tcpListen || es[0].rxQueue != 2 || es[0].inode != 12345 {
		t.Errorf("listener: %+v", es[0])
	}
	if es[1].remote != netip.MustParseAddrPort("127.0.0.3:50000") || es[1].state != tcpSynRecv {
		t.Errorf("request socket: %+v", es[1])
	}
	v6, err := parseProcAddr("00000000000000000000000001000000:0050")
	if err != nil || v6 != netip.MustParseAddrPort("[::1]:80") {
		t.Errorf("::1 port 80: %v, %v", v6, err)
	}
	for _, bad := range []string{"", "0100007F", "0100007F:", "XX00007F:0050", "01007F:0050", "0100007F:10000"} {
		if _, err := parseProcAddr(bad); err == nil {
			t.Errorf("parseProcAddr(%q) accepted", bad)
		}
	}
	if _, err := parseTCPTable([]byte("header\n 0: 0100007F:1F90 00000000:0000 0A\n")); err == nil {
		t.Errorf("a short line accepted")
	}
}

// TestProcessListeners finds this process's own listener in the kernel's
// table, with the connection waiting in its accept queue.
func TestProcessListeners(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ls, err := processListeners(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	want := netip.MustParseAddrPort(l.Addr().String())
	var found []listenerInfo
	for _, x := range ls {
		if x.local == want {
			found = append(found, x)
		}
	}
	if len(found) != 1 {
		t.Fatalf("listener %v not found once in %+v", want, ls)
	}
	if n, err := pendingConnections(os.Getpid(), found); err != nil || n != 1 {
		t.Errorf("pending connections %d, %v; want 1", n, err)
	}
	a, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	if n, err := pendingConnections(os.Getpid(), found); err != nil || n != 0 {
		t.Errorf("pending connections after accept %d, %v; want 0", n, err)
	}
}

// FuzzParseTCPTable: any /proc/net/tcp text parses or fails, never panics.
func FuzzParseTCPTable(f *testing.F) {
	f.Add([]byte("h\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000002 00:00000000 00000000     0        0 12345 1\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseTCPTable(b)
	})
}
