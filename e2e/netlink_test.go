package e2e

// Netlink sockets carried by a dump and restore and by a live migration
// (issue 13): a process holding a route socket in the link group and a
// generic socket on an explicit port id keeps both, each on its port id:
// it asks both and gets its answers, and hears of links created after.
// The process runs on a node of a cluster (e2e/cluster): the links the
// test creates to make events are the node's, never the host's.

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
)

// TestNodeNetlink: testdata/netlink on A is dumped and restored on A
// (`migrate restore --check`, which compares the sockets' port ids,
// groups and destinations with the image), then moved live to B. After
// each, its route and generic sockets answer a request, on the port ids
// they had at the start, and a veth pair created on its node reaches it
// as a link event.
func TestNodeNetlink(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	p, err := c.A.Start(cluster.StartOptions{}, testutil.Build(t, "netlink"), "mgnl")
	if err != nil {
		t.Fatal(err)
	}
	logOnFailure(t, c, p.Log)
	waitLogLine(t, p.Log, "ready ")
	var ready string
	for _, l := range testutil.LogLines(t, p.Log) {
		if strings.HasPrefix(l, "ready ") {
			ready = l
		}
	}
	ports := fmt.Sprintf("route=%s generic=%s", field(t, ready, "route"), field(t, ready, "generic"))
	nspid := strconv.Itoa(p.NSPID)
	links := 0
	event := func(n *cluster.Node) {
		t.Helper()
		name := fmt.Sprintf("mgnl%d", links)
		links++
		if out, err := n.Command("ip", "link", "add", name, "type", "veth", "peer", "name", name+"p").CombinedOutput(); err != nil {
			t.Fatalf("node %s: ip link add %s: %v: %s", n, name, err, out)
		}
		waitLogLine(t, p.Log, "event "+name)
	}
	checks := 0
	check := func(n *cluster.Node) {
		t.Helper()
		checks++
		if out, err := n.Command("kill", "-USR1", nspid).CombinedOutput(); err != nil {
			t.Fatalf("node %s: kill -USR1 %s: %v: %s", n, nspid, err, out)
		}
		prefix := fmt.Sprintf("check %d ", checks)
		waitLogLine(t, p.Log, prefix)
		for _, l := range testutil.LogLines(t, p.Log) {
			if strings.HasPrefix(l, prefix) && l != prefix+ports+" ok" {
				t.Errorf("after the move: %q, want the port ids of the start (%s)", l, ports)
			}
		}
	}
	event(c.A)
	check(c.A)

	// Dump and restore on A.
	dir := filepath.Join(c.Dir, "netlink-img")
	if out, err := c.A.Command(c.MigrateBin, "dump", "--dir", dir, nspid).CombinedOutput(); err != nil {
		t.Fatalf("migrate dump: %v\n%s", err, out)
	}
	out, err := c.A.Command(c.MigrateBin, "restore", "--check", "--dir", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("migrate restore: %v\n%s", err, out)
	}
	t.Logf("migrate restore: %s", strings.TrimSpace(string(out)))
	onlyCopy(t, c, "netlink", p.NSPID, c.A)
	check(c.A)
	event(c.A)

	// Live, A -> B.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := c.Migrate(ctx, c.A, c.B, p.NSPID)
	if err != nil {
		t.Fatalf("migrate --to: %v", err)
	}
	t.Logf("A -> B: %d rounds, downtime %.1f ms", len(res.Rounds), res.DowntimeMS)
	onlyCopy(t, c, "netlink", p.NSPID, c.B)
	check(c.B)
	event(c.B)
}
