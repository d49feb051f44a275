package core

import (
	"bytes"
	"encoding/json"
	"testing"
)

// validNet is a container's network namespace as a dump reads it.
func validNet() *NetNamespace {
	return &NetNamespace{
		Links: []NetLink{
			{Name: "lo", Kind: LinkLoopback, MTU: 65536, Up: true, Addrs: []NetAddr{{Prefix: "127.0.0.1/8", Scope: 254}, {Prefix: "::1/128", Scope: 254}}},
			{Name: "eth0", Kind: LinkVeth, MAC: "02:00:0a:ef:00:02", MTU: 1400, Up: true, Peer: "veth1",
				Addrs: []NetAddr{{Prefix: "10.0.0.2/24"}, {Prefix: "fd00::2/64", NoDAD: true}}},
		},
		Routes: []NetRoute{{Dst: "0.0.0.0/0", Gateway: "10.0.0.1", Dev: "eth0", Protocol: 3, Type: 1},
			{Dst: "::/0", Gateway: "fd00::1", Dev: "eth0", Metric: 1024, Protocol: 3, Type: 1}},
		Sysctls: map[string]string{"net/ipv4/ip_forward": "1", "net/ipv4/conf/eth0/forwarding": "1", "net/ipv6/conf/all/disable_ipv6": "0"},
	}
}

// TestDecodeImageNet: a container's image with its network namespace
// decodes; one whose interfaces, routes or sysctls are malformed, or
// name what the namespace does not have, is refused.
func TestDecodeImageNet(t *testing.T) {
	decode := func(mutate func(*NetNamespace)) error {
		img := validImage()
		withNS(img)
		img.Namespaces.Net = validNet()
		if mutate != nil {
			mutate(img.Namespaces.Net)
		}
		b, err := json.Marshal(img)
		if err != nil {
			t.Fatal(err)
		}
		_, err = DecodeImage(bytes.NewReader(b))
		return err
	}
	if err := decode(nil); err != nil {
		t.Fatalf("valid image refused: %v", err)
	}
	for what, mutate := range map[string]func(*NetNamespace){
		"kind":             func(n *NetNamespace) { n.Links[1].Kind = "bridge" },
		"no loopback":      func(n *NetNamespace) { n.Links = n.Links[1:] },
		"two loopbacks":    func(n *NetNamespace) { n.Links[1] = n.Links[0] },
		"link name":        func(n *NetNamespace) { n.Links[1].Name = "../x" },
		"long name":        func(n *NetNamespace) { n.Links[1].Name = "abcdefghijklmnop" },
		"peer name":        func(n *NetNamespace) { n.Links[1].Peer = "a b" },
		"MAC":              func(n *NetNamespace) { n.Links[1].MAC = "01:00:00:00:00:01" },
		"MTU":              func(n *NetNamespace) { n.Links[1].MTU = 10 },
		"address":          func(n *NetNamespace) { n.Links[1].Addrs[0].Prefix = "10.0.0.300/24" },
		"route":            func(n *NetNamespace) { n.Routes[0].Dst = "default" },
		"route's link":     func(n *NetNamespace) { n.Routes[0].Dev = "eth9" },
		"gateway family":   func(n *NetNamespace) { n.Routes[0].Gateway = "fd00::1" },
		"sysctl":           func(n *NetNamespace) { n.Sysctls["kernel/core_pattern"] = "|/bin/sh" },
		"sysctl path":      func(n *NetNamespace) { n.Sysctls["net/ipv4/conf/../forwarding"] = "1" },
		"sysctl value":     func(n *NetNamespace) { n.Sysctls["net/ipv4/ip_forward"] = "1\n0" },
		"sysctl's link":    func(n *NetNamespace) { n.Sysctls["net/ipv4/conf/eth9/forwarding"] = "1" },
		"loopback's peer":  func(n *NetNamespace) { n.Links[0].Peer = "x" },
		"loopback renamed": func(n *NetNamespace) { n.Links[0].Name = "lo1" },
		"broadcast":        func(n *NetNamespace) { n.Links[1].Addrs[1].Broadcast = "10.0.0.255" },
		"label":            func(n *NetNamespace) { n.Links[1].Addrs[0].Label = "lo:1" },
	} {
		if err := decode(mutate); err == nil {
			t.Errorf("an image with a bad %s accepted", what)
		}
	}
}

// FuzzNetNamespace: the checks of a network namespace never panic, and
// what they accept survives a round trip.
func FuzzNetNamespace(f *testing.F) {
	good, _ := json.Marshal(validNet())
	f.Add(good)
	f.Add([]byte(`{"links":[{"name":"lo","kind":"loopback","mtu":65536}],"sysctls":{"net/ipv4/conf/lo/forwarding":"0"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var n NetNamespace
		if json.Unmarshal(data, &n) != nil || validateNet(&n) != nil {
			return
		}
		again, err := json.Marshal(&n)
		if err != nil {
			t.Fatal(err)
		}
		var m NetNamespace
		if err := json.Unmarshal(again, &m); err != nil {
			t.Fatal(err)
		}
		if err := validateNet(&m); err != nil {
			t.Fatalf("accepted namespace fails after a round trip: %v", err)
		}
	})
}
