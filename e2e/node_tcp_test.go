package e2e

// Established TCP connections moved between nodes with their process: a
// server on A, bound to the VIP, talks to a client on the client node; the
// server moves to B mid-stream, the hooks move the VIP with it, and the
// client never notices.

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
)

// TestNodeTCPStream: testdata/tcpstream's server on A, listening on the
// wildcard address, reached through the VIP (IPv4, then IPv6), exchanges numbered messages both ways with a client
// on the client node over two connections, one every millisecond. Once
// 300 of them arrived, the server moves to B. Every message of both
// directions then arrives exactly once, in order, on both sides (the
// workload checks each one), both finish with no error, and exactly one
// server ran meanwhile, on B.
func TestNodeTCPStream(t *testing.T) {
	for _, tc := range []struct{ name, any, vip string }{
		{"ipv4", "0.0.0.0", cluster.VIP.String()},
		{"ipv6", "::", cluster.VIP6.String()},
	} {
		t.Run(tc.name, func(t *testing.T) { runNodeTCPStream(t, tc.any, tc.vip) })
	}
}

// runNodeTCPStream runs the server listening on the wildcard address any,
// the client connecting to vip.
func runNodeTCPStream(t *testing.T, any, vip string) {
	c := newCluster(t, cluster.Options{})
	if !c.Hooks {
		// Without hooks the VIP moves after migrate returns: until then
		// the old node answers the client's packets with resets.
		t.Skip("migrate takes no --hook: the VIP cannot move with the connections")
	}
	bin := testutil.Build(t, "tcpstream")
	args := []string{"9100", "2", "1500", "1500", "1000"}
	srv, err := c.A.Start(cluster.StartOptions{}, bin, append([]string{"server", any}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	waitLogLine(t, srv.Log, "ready ")
	cli, err := c.Client.Start(cluster.StartOptions{}, bin, append([]string{"client", vip}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	waitLogLine(t, srv.Log, "conn 1 recv 300")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := c.Migrate(ctx, c.A, c.B, srv.NSPID)
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	t.Logf("A -> B: %d rounds, %d bytes on the wire, downtime %.1f ms (target %.1f ms), total %.1f ms",
		len(res.Rounds), res.BytesWire, res.DowntimeMS, res.TargetDowntimeMS, res.TotalMS)
	onlyCopy(t, c, "tcpstream", srv.NSPID, c.B)
	checkVIPOn(t, c, c.B)
	for _, log := range []string{srv.Log, cli.Log} {
		waitLogLine(t, log, "all done")
	}
	select {
	case <-cli.Done():
		if err := cli.Err(); err != nil {
			t.Errorf("the client: %v", err)
		}
	case <-time.After(short):
		t.Errorf("the client did not exit")
	}
}

// waitLogLine waits until a line of the log starts with prefix; an
// "error" line fails the test.
func waitLogLine(t *testing.T, log, prefix string) {
	t.Helper()
	testutil.WaitFor(t, long, "\""+prefix+"\" in "+log, func() bool {
		for _, l := range testutil.LogLines(t, log) {
			if strings.HasPrefix(l, "error") || strings.HasPrefix(l, "FAIL") {
				t.Fatalf("%s: %s", log, l)
			}
			if strings.HasPrefix(l, prefix) {
				return true
			}
		}
		return false
	})
}
