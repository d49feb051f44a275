package netlock

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// readWithin reads len(want) bytes from c within d.
func readWithin(c net.Conn, want string, d time.Duration) error {
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, len(want))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != want {
		return errors.New("read " + string(buf) + ", want " + want)
	}
	return nil
}

// TestLockHoldsConnection: while locked, neither end of a connection gets
// the other's data and nothing resets it; after Unlock TCP retransmits and
// the data arrives. The two ends have different addresses, so that a rule
// with source and destination mixed up would show.
func TestLockHoldsConnection(t *testing.T) {
	for _, tc := range []struct {
		name, listen, dial, from, dialNet string
		mapped                            bool
	}{
		{name: "ipv4", listen: "127.0.0.1:0", from: "127.0.0.2", dialNet: "tcp4"},
		{name: "ipv6", listen: "[2001:db8::1]:0", from: "2001:db8::2", dialNet: "tcp6"},
		// A dual-stack socket talking IPv4: the process sees ::ffff:127.0.0.1.
		{name: "v4mapped", listen: "[::]:0", dial: "127.0.0.1", from: "127.0.0.2", dialNet: "tcp4", mapped: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNetNS(t)
			if tc.name == "ipv6" {
				ns.addAddr(t, "lo", netip.MustParsePrefix("2001:db8::1/128"))
				ns.addAddr(t, "lo", netip.MustParsePrefix("2001:db8::2/128"))
			}
			ln := ns.listen(t, "tcp", tc.listen)
			if tc.dial != "" {
				_, p, _ := net.SplitHostPort(ln.Addr().String())
				ln = redirectAddr{ln, net.JoinHostPort(tc.dial, p)}
			}
			client, server := ns.connect(t, tc.from, tc.dialNet, ln)
			other, otherServer := ns.connect(t, tc.from, tc.dialNet, ln) // not locked
			conn := serverSide(server)
			if tc.mapped != conn.Local.Addr().Is4In6() {
				t.Fatalf("server side %v: want mapped=%v", conn, tc.mapped)
			}

			l, err := Install(ns.path, Spec{Conns: []Conn{conn}}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Unlock()
			if got := tables(t, ns); !slices.Equal(got, []string{l.Name()}) {
				t.Errorf("tables in the namespace: %q, want [%s]", got, l.Name())
			}
			if slices.Contains(tables(t, nil), l.Name()) {
				t.Fatalf("%s installed in the caller's namespace", l.Name())
			}

			if _, err := client.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			if _, err := server.Write([]byte("pong")); err != nil {
				t.Fatal(err)
			}
			if err := readWithin(server, "ping", 400*time.Millisecond); !isTimeout(err) {
				t.Fatalf("server read while locked: %v, want a timeout", err)
			}
			if err := readWithin(client, "pong", 100*time.Millisecond); !isTimeout(err) {
				t.Fatalf("client read while locked: %v, want a timeout", err)
			}
			// Other connections between the same addresses still flow.
			if _, err := other.Write([]byte("free")); err != nil {
				t.Fatal(err)
			}
			if err := readWithin(otherServer, "free", time.Second); err != nil {
				t.Fatalf("unlocked connection: %v", err)
			}

			if err := l.Unlock(); err != nil {
				t.Fatal(err)
			}
			if got := tables(t, ns); len(got) != 0 {
				t.Errorf("tables after Unlock: %q", got)
			}
			if err := readWithin(server, "ping", 5*time.Second); err != nil {
				t.Fatalf("server read after Unlock: %v", err)
			}
			if err := readWithin(client, "pong", 5*time.Second); err != nil {
				t.Fatalf("client read after Unlock: %v", err)
			}
		})
	}
}

// redirectAddr makes connect dial another address of the same listener.
type redirectAddr struct {
	net.Listener
	addr string
}

func (r redirectAddr) Addr() net.Addr {
	a, err := net.ResolveTCPAddr("tcp", r.addr)
	if err != nil {
		panic(err)
	}
	return a
}

// TestLockHidesReset: the original process dies while locked (here: its
// socket is closed with SO_LINGER 0, which sends RST); the peer must see
// nothing. The unlocked control shows that the RST is real.
func TestLockHidesReset(t *testing.T) {
	for _, locked := range []bool{true, false} {
		name := "unlocked"
		if locked {
			name = "locked"
		}
		t.Run(name, func(t *testing.T) {
			ns := newNetNS(t)
			ln := ns.listen(t, "tcp", "127.0.0.1:0")
			client, server := ns.connect(t, "127.0.0.2", "tcp4", ln)
			if locked {
				l, err := Install(ns.path, Spec{Conns: []Conn{serverSide(server)}}, Options{})
				if err != nil {
					t.Fatal(err)
				}
				defer l.Unlock()
			}
			server.SetLinger(0)
			server.Close()
			err := readWithin(client, "x", 300*time.Millisecond)
			if locked && !isTimeout(err) {
				t.Fatalf("read while locked after the reset: %v, want a timeout", err)
			}
			if !locked && !errors.Is(err, unix.ECONNRESET) {
				t.Fatalf("read after the reset, unlocked: %v, want ECONNRESET", err)
			}
		})
	}
}

// TestLockListeners: connection requests to locked listeners are neither
// accepted nor refused but wait, and complete after Unlock; other ports
// behave as usual.
func TestLockListeners(t *testing.T) {
	ns := newNetNS(t)
	port := func(ln net.Listener) string {
		_, p, _ := net.SplitHostPort(ln.Addr().String())
		return p
	}
	v4 := ns.listen(t, "tcp4", "127.0.0.1:0")
	v6 := ns.listen(t, "tcp6", "[::1]:0")
	dual := ns.listen(t, "tcp", "[::]:0") // dual stack
	free := ns.listen(t, "tcp4", "127.0.0.1:0")
	closed := ns.listen(t, "tcp4", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()
	for _, ln := range []net.Listener{v4, v6, dual, free} {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}

	l, err := Install(ns.path, Spec{Listeners: []netip.AddrPort{
		addrPort(v4.Addr()), addrPort(v6.Addr()), addrPort(dual.Addr()),
	}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()

	held := []string{
		v4.Addr().String(), v6.Addr().String(),
		"127.0.0.1:" + port(dual), "[::1]:" + port(dual),
	}
	var wg sync.WaitGroup
	for _, addr := range held {
		wg.Go(func() {
			c, err := ns.dial("tcp", addr, 300*time.Millisecond)
			if err == nil {
				c.Close()
				t.Errorf("connect to locked listener %s succeeded", addr)
			} else if !isTimeout(err) {
				t.Errorf("connect to locked listener %s: %v, want a timeout", addr, err)
			}
		})
	}
	wg.Wait()
	if c, err := ns.dial("tcp", free.Addr().String(), time.Second); err != nil {
		t.Errorf("connect to an unlocked listener: %v", err)
	} else {
		c.Close()
	}
	if _, err := ns.dial("tcp", closedAddr, time.Second); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("connect to a closed port while locked: %v, want ECONNREFUSED", err)
	}

	// A request made while locked completes once the lock goes (the client
	// retransmits its SYN after a second).
	results := make(chan error, len(held))
	start := time.Now()
	for _, addr := range held {
		go func() {
			c, err := ns.dial("tcp", addr, 4*time.Second)
			if err == nil {
				c.Close()
			}
			results <- err
		}()
	}
	time.Sleep(200 * time.Millisecond)
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	for range held {
		if err := <-results; err != nil {
			t.Errorf("connect after Unlock: %v", err)
		}
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("connections completed after %v, before Unlock", d)
	}
}

func TestUnlockIdempotent(t *testing.T) {
	ns := newNetNS(t)
	spec := Spec{Listeners: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:80")}}
	l, err := Install(ns.path, spec, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := l.Unlock(); err != nil {
			t.Fatal(err)
		}
	}

	// Table removed behind the lock's back.
	l, err = Install(ns.path, spec, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := Remove(ns.path, l.Name()); err != nil {
		t.Fatal(err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatalf("Unlock of a removed table: %v", err)
	}

	// Disown leaves the table; Unlock then does nothing.
	l, err = Install(ns.path, spec, Options{})
	if err != nil {
		t.Fatal(err)
	}
	l.Disown()
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	if got := tables(t, ns); !slices.Equal(got, []string{l.Name()}) {
		t.Fatalf("tables after Disown and Unlock: %q", got)
	}
	if err := Remove(ns.path, l.Name()); err != nil {
		t.Fatal(err)
	}
}

// TestInstallExisting: a name clash fails the whole batch (and does not
// hang waiting for acknowledgements) and leaves the existing table alone.
func TestInstallExisting(t *testing.T) {
	ns := newNetNS(t)
	name := "migrate_keep_00000000000000aa"
	e, err := buildElements(Spec{Listeners: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:80")}})
	if err != nil {
		t.Fatal(err)
	}
	if err := install(ns.f, name, e); err != nil {
		t.Fatal(err)
	}
	err = install(ns.f, name, e)
	if !errors.Is(err, unix.EEXIST) {
		t.Fatalf("second install: %v, want EEXIST", err)
	}
	if got := tables(t, ns); !slices.Equal(got, []string{name}) {
		t.Fatalf("tables: %q", got)
	}
}

func TestCleanStale(t *testing.T) {
	ns := newNetNS(t)
	me, err := self()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := owner{PID: cmd.ProcessState.Pid(), Start: 1, Seq: 1}.name()
	reused := owner{PID: me.PID, Start: me.Start + 1, Seq: 1}.name() // pid now someone else's
	foreign := []string{"filter", "migrate_x", "migrate_keep_"}
	for _, name := range append([]string{dead, reused}, foreign...) {
		if err := install(ns.f, name, &elements{}); err != nil {
			t.Fatal(err)
		}
	}
	live, err := Install(ns.path, Spec{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Unlock()
	keep, err := Install(ns.path, Spec{}, Options{Keep: true})
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Unlock()

	removed, err := CleanStale(ns.path)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	want := []string{dead, reused}
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Errorf("CleanStale removed %q, want %q", removed, want)
	}
	left := append(foreign, live.Name(), keep.Name())
	slices.Sort(left)
	if got := tables(t, ns); !slices.Equal(got, left) {
		t.Errorf("tables left: %q, want %q", got, left)
	}
	if removed, err := CleanStale(ns.path); err != nil || len(removed) != 0 {
		t.Errorf("second CleanStale: %q, %v", removed, err)
	}
}

func TestRemoveKeep(t *testing.T) {
	ns := newNetNS(t)
	l, err := Install(ns.path, Spec{Conns: []Conn{{
		Local:  netip.MustParseAddrPort("[2001:db8::1]:443"),
		Remote: netip.MustParseAddrPort("[2001:db8::2]:50000"),
	}}}, Options{Keep: true})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(l.Name(), keepPrefix) {
		t.Errorf("Keep lock named %q", l.Name())
	}
	l.Disown() // this process hands the lock to a restore

	if err := Remove(ns.path, "filter"); !errors.Is(err, ErrForeignTable) {
		t.Errorf("Remove(filter): %v, want ErrForeignTable", err)
	}
	if err := Remove(ns.path, l.Name()); err != nil {
		t.Fatal(err)
	}
	if got := tables(t, ns); len(got) != 0 {
		t.Errorf("tables after Remove: %q", got)
	}
	if err := Remove(ns.path, l.Name()); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	if err := Remove("/nonexistent/ns", l.Name()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Remove in a missing namespace: %v", err)
	}
	if err := Remove("/proc/self/ns/mnt", l.Name()); err == nil {
		t.Errorf("Remove in a mount namespace accepted")
	}
}

// TestInstallLarge: a batch far beyond the default netlink send buffer and
// the 64 KiB an attribute can hold still goes in as one.
func TestInstallLarge(t *testing.T) {
	ns := newNetNS(t)
	var spec Spec
	for i := range 10000 {
		p := uint16(1024 + i)
		spec.Conns = append(spec.Conns,
			Conn{Local: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), 80), Remote: netip.AddrPortFrom(netip.MustParseAddr("10.1.2.3"), p)},
			Conn{Local: netip.AddrPortFrom(netip.MustParseAddr("2001:db8::1"), 80), Remote: netip.AddrPortFrom(netip.MustParseAddr("2001:db8::2"), p)},
		)
		spec.Listeners = append(spec.Listeners, netip.AddrPortFrom(netip.MustParseAddr("::"), p))
	}
	start := time.Now()
	l, err := Install(ns.path, spec, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d connections, %d listeners locked in %v", len(spec.Conns), len(spec.Listeners), time.Since(start))
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
}

// TestLockRedirected: a connection from another namespace over a veth,
// redirected (REDIRECT, as for a transparent proxy) from port 7777 to the
// process's port. Prerouting sees the packets before the redirect, with
// addresses the process never sees; the input chain must hold them.
func TestLockRedirected(t *testing.T) {
	srv, cli := newNetNS(t), newNetNS(t)
	srv.veth(t, "va", cli, "vb")
	srv.addAddr(t, "va", netip.MustParsePrefix("10.0.0.1/24"))
	cli.addAddr(t, "vb", netip.MustParsePrefix("10.0.0.2/24"))
	ln := srv.listen(t, "tcp4", "10.0.0.1:0")
	redirect(t, srv, 7777, addrPort(ln.Addr()).Port())

	client, server := cli.connect(t, "", "tcp4", redirectAddr{ln, "10.0.0.1:7777"})
	conn := serverSide(server)
	if conn.Local != addrPort(ln.Addr()) || conn.Remote.Addr() != netip.MustParseAddr("10.0.0.2") {
		t.Fatalf("server side %v, not redirected", conn)
	}
	l, err := Install(srv.path, Spec{Conns: []Conn{conn}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	client.Write([]byte("ping"))
	server.Write([]byte("pong"))
	if err := readWithin(server, "ping", 400*time.Millisecond); !isTimeout(err) {
		t.Fatalf("server read while locked: %v, want a timeout", err)
	}
	if err := readWithin(client, "pong", 100*time.Millisecond); !isTimeout(err) {
		t.Fatalf("client read while locked: %v, want a timeout", err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := readWithin(server, "ping", 5*time.Second); err != nil {
		t.Fatalf("server read after Unlock: %v", err)
	}
	if err := readWithin(client, "pong", 5*time.Second); err != nil {
		t.Fatalf("client read after Unlock: %v", err)
	}
}

// redirect installs `tcp dport from redirect to :to` in ns's prerouting.
func redirect(t *testing.T, ns *testNS, from, to uint16) {
	t.Helper()
	c, err := dial(ns.f, 0)
	if err != nil {
		t.Fatal(err)
	}
	tb := c.AddTable(&nftables.Table{Name: "nat", Family: nftables.TableFamilyIPv4})
	ch := c.AddChain(&nftables.Chain{
		Name: "prerouting", Table: tb, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest,
	})
	c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: append(matchTCP(unix.NFPROTO_IPV4),
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port(from)},
		&expr.Immediate{Register: 1, Data: port(to)},
		&expr.Redir{RegisterProtoMin: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED},
	)})
	if err := c.Flush(); err != nil {
		skipOrFail(t, "nat", err)
	}
}

// TestLockAdd: connections added to an installed lock (one on the
// listening ports, as a source's before its freeze, or one installed
// empty, as a live target's before the freeze, which drops nothing until
// then) are dropped, and only they.
func TestLockAdd(t *testing.T) {
	for _, c := range []struct {
		name  string
		empty bool
	}{{"listeners", false}, {"empty", true}} {
		t.Run(c.name, func(t *testing.T) {
			ns := newNetNS(t)
			ln := ns.listen(t, "tcp", "127.0.0.1:0")
			client, server := ns.connect(t, "127.0.0.2", "tcp4", ln)
			other, otherServer := ns.connect(t, "127.0.0.2", "tcp4", ln)
			var spec Spec
			if !c.empty {
				spec.Listeners = []netip.AddrPort{netip.MustParseAddrPort(ln.Addr().String())}
			}
			l, err := Install(ns.path, spec, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Unlock()
			if c.empty {
				if _, err := client.Write([]byte("before")); err != nil {
					t.Fatal(err)
				}
				if err := readWithin(server, "before", 5*time.Second); err != nil {
					t.Fatalf("through the empty lock: %v", err)
				}
			}
			if err := l.Add(Spec{Conns: []Conn{serverSide(server)}}); err != nil {
				t.Fatalf("add: %v", err)
			}
			if _, err := client.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			if err := readWithin(server, "ping", 400*time.Millisecond); !isTimeout(err) {
				t.Fatalf("server read after the connection was added: %v, want a timeout", err)
			}
			if _, err := other.Write([]byte("free")); err != nil {
				t.Fatal(err)
			}
			if err := readWithin(otherServer, "free", 5*time.Second); err != nil {
				t.Fatalf("a connection not added: %v", err)
			}
			if err := l.Unlock(); err != nil {
				t.Fatal(err)
			}
			if err := readWithin(server, "ping", 5*time.Second); err != nil {
				t.Fatalf("after unlock: %v", err)
			}
			if err := l.Add(Spec{Conns: []Conn{serverSide(server)}}); err == nil {
				t.Errorf("add to a released lock: no error")
			}
		})
	}
}

// TestLockLift: a lifted lock drops nothing, its table still there until
// Unlock.
func TestLockLift(t *testing.T) {
	ns := newNetNS(t)
	ln := ns.listen(t, "tcp", "127.0.0.1:0")
	client, server := ns.connect(t, "127.0.0.2", "tcp4", ln)
	l, err := Install(ns.path, Spec{Conns: []Conn{serverSide(server)}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	if _, err := client.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := readWithin(server, "ping", 300*time.Millisecond); !isTimeout(err) {
		t.Fatalf("server read while locked: %v, want a timeout", err)
	}
	start := time.Now()
	if err := l.Lift(); err != nil {
		t.Fatalf("lift: %v", err)
	}
	t.Logf("lift took %v", time.Since(start))
	if got := tables(t, ns); !slices.Equal(got, []string{l.Name()}) {
		t.Errorf("tables after lift: %q", got)
	}
	if err := readWithin(server, "ping", 5*time.Second); err != nil {
		t.Fatalf("after lift: %v", err)
	}
	start = time.Now()
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	t.Logf("unlock took %v", time.Since(start))
	if got := tables(t, ns); len(got) != 0 {
		t.Errorf("tables after unlock: %q", got)
	}
}
