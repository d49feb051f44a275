package netconf

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/osthread"
	"github.com/procmig/migrate/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// nsThread is a thread in a network namespace of its own, made for the
// test, that runs what it is given; it ends (and the namespace with it,
// once nothing holds it) when the test does.
type nsThread struct {
	do chan func()
	fd int // the namespace, for CreateVeth
}

func newNSThread(t *testing.T) *nsThread {
	t.Helper()
	n := &nsThread{do: make(chan func())}
	errc := make(chan error, 1)
	osthread.Go(func() {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		n.fd = fd
		errc <- err
		for f := range n.do {
			f()
		}
	})
	if err := <-errc; err != nil {
		testutil.Unavailable(t, "a network namespace of the test's own: %v", err)
	}
	t.Cleanup(func() {
		close(n.do)
		unix.Close(n.fd)
	})
	return n
}

// run runs f on the thread.
func (n *nsThread) run(f func() error) error {
	errc := make(chan error, 1)
	n.do <- func() { errc <- f() }
	return <-errc
}

// TestMakeAndRead: a namespace made by CreateVeth, Attach and Apply reads
// back (Read) as it was given: interfaces, addresses, routes, sysctls;
// the veth's other end is found by its name (PeerName).
func TestMakeAndRead(t *testing.T) {
	testutil.RequireRoot(t)
	host, ctr := newNSThread(t), newNSThread(t)
	want := &core.NetNamespace{
		Links: []core.NetLink{
			{Name: "lo", Kind: core.LinkLoopback, MTU: 65536, Up: true, Addrs: []core.NetAddr{{Prefix: "127.0.0.1/8", Scope: unix.RT_SCOPE_HOST}, {Prefix: "::1/128", Scope: unix.RT_SCOPE_HOST}}},
			{Name: "eth0", Kind: core.LinkVeth, MAC: "02:00:0a:00:00:02", MTU: 1400, Up: true,
				// In the kernel's order: IPv4 primaries by scope, narrowest first.
				Addrs: []core.NetAddr{{Prefix: "10.9.1.2/32", Scope: unix.RT_SCOPE_LINK, Label: "eth0:1"}, {Prefix: "10.9.0.2/24", Broadcast: "10.9.0.255"}, {Prefix: "fd00:9::2/64", NoDAD: true}}},
		},
		Routes: []core.NetRoute{
			{Dst: "0.0.0.0/0", Gateway: "10.9.0.1", Dev: "eth0", Protocol: unix.RTPROT_BOOT, Scope: unix.RT_SCOPE_UNIVERSE, Type: unix.RTN_UNICAST},
			{Dst: "10.10.0.0/16", Dev: "eth0", Metric: 5, Protocol: unix.RTPROT_STATIC, Scope: unix.RT_SCOPE_LINK, Type: unix.RTN_UNICAST},
			{Dst: "fd00:10::/64", Gateway: "fd00:9::1", Dev: "eth0", Metric: 1024, Protocol: unix.RTPROT_BOOT, Type: unix.RTN_UNICAST},
		},
		Sysctls: map[string]string{"net/ipv4/ip_forward": "1", "net/ipv6/conf/eth0/forwarding": "1", "net/ipv6/conf/lo/disable_ipv6": "0"},
	}
	if err := host.run(func() error { return CreateVeth("h0", &want.Links[1], ctr.fd) }); err != nil {
		t.Fatal(err)
	}
	if err := host.run(func() error { return Attach("h0", "") }); err != nil {
		t.Fatal(err)
	}
	if err := host.run(func() error { return Attach("h0", "nobridge") }); err == nil {
		t.Error("attached to a bridge that does not exist")
	}
	if err := ctr.run(func() error { return Apply(want) }); err != nil {
		t.Fatal(err)
	}
	var cfg *Config
	if err := ctr.run(func() (err error) { cfg, err = Read(); return err }); err != nil {
		t.Fatal(err)
	}
	got := cfg.Core()
	// The kernel's own link-local address of eth0, made once it is up.
	for i := range got.Links {
		got.Links[i].Addrs = slices.DeleteFunc(got.Links[i].Addrs, func(a core.NetAddr) bool { return a.Scope == unix.RT_SCOPE_LINK && a.Prefix[:4] == "fe80" })
	}
	if g, w := fmt.Sprint(got.Links), fmt.Sprint(want.Links); g != w {
		t.Errorf("links\n%s\nwant\n%s", g, w)
	}
	if g, w := fmt.Sprint(got.Routes), fmt.Sprint(want.Routes); g != w {
		t.Errorf("routes\n%s\nwant\n%s", g, w)
	}
	for name, v := range want.Sysctls {
		if got.Sysctls[name] != v {
			t.Errorf("sysctl %s: %q, want %q", name, got.Sysctls[name], v)
		}
	}
	eth := cfg.Links[slices.IndexFunc(cfg.Links, func(l Link) bool { return l.Name == "eth0" })]
	var peer string
	if err := host.run(func() (err error) { peer, err = PeerName(&eth); return err }); err != nil || peer != "h0" {
		t.Errorf("the other end of eth0: %q, %v", peer, err)
	}
	// Not from a third namespace.
	if peer, err := PeerName(&eth); err != nil || peer != "" {
		t.Errorf("the other end of eth0 from elsewhere: %q, %v", peer, err)
	}
	if err := host.run(func() error { return CreateVeth("h0", &want.Links[1], ctr.fd) }); !errors.Is(err, unix.EEXIST) {
		t.Errorf("a second veth h0: %v", err)
	}
	if !LinkExists("lo") || LinkExists("h0") {
		t.Error("LinkExists here")
	}
}
