package e2e

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
)

// tcpStreamCase is one run of testdata/tcpstream.c: a server and a client
// sending numbered messages both ways.
type tcpStreamCase struct {
	name string
	addr string
	// server and client arguments after ADDR PORT: CONNS COUNT INTERVAL_US
	// [STALL_AT STALL_MS].
	server, client []string
	// dumpWhen is the line of the server's log to wait for before the dump.
	dumpWhen string
	// wantStates are TCP states the image must hold (for the half-closed
	// cases), each "A|B" for either.
	wantStates []string
	// queues: the image must hold bytes in both queues of some connection.
	queues bool
}

var tcpStreamCases = []tcpStreamCase{
	{name: "ipv4", addr: "127.0.0.1", server: []string{"3", "1500", "1500", "2000"}, client: []string{"3", "1500", "1500", "2000"}, dumpWhen: "conn 2 recv 300"},
	{name: "ipv6", addr: "::1", server: []string{"2", "1000", "1000", "2000"}, client: []string{"2", "1000", "1000", "2000"}, dumpWhen: "conn 1 recv 300"},
	// The client finishes sending first: the server's connections are in
	// CLOSE_WAIT (a FIN received) when dumped.
	{name: "fin-received", addr: "127.0.0.1", server: []string{"2", "1500", "200", "2000"}, client: []string{"2", "200", "1500", "1000"}, dumpWhen: "conn 1 recv 200", wantStates: []string{"CLOSE_WAIT"}},
	// The server finishes sending first: FIN_WAIT2 (its FIN acknowledged).
	{name: "fin-sent", addr: "127.0.0.1", server: []string{"2", "200", "1500", "1000"}, client: []string{"2", "1500", "200", "2000"}, dumpWhen: "conn 1 sent 200", wantStates: []string{"FIN_WAIT2"}},
	// Both stop reading for a while as fast senders fill the queues: the
	// server is dumped with bytes unread in its receive queues and unsent
	// in its send queues.
	// (The client's small receive buffer closes its window early, so that
	// the server's send queue stays full.)
	{name: "full-queues", addr: "127.0.0.1", server: []string{"1", "400000", "400000", "0", "100", "3000"}, client: []string{"1", "400000", "400000", "0", "100", "3000", "16384"}, dumpWhen: "conn 0 recv 100", queues: true, wantStates: []string{"ESTABLISHED"}},
	// The client's few messages and its FIN all arrived, the server sent
	// everything and its FIN, which waits behind bytes the stalled client
	// has no room for: LAST_ACK with a queue.
	{name: "last-ack", addr: "127.0.0.1", server: []string{"1", "60000", "1500", "0", "100", "3000"}, client: []string{"1", "1500", "60000", "0", "100", "3000", "16384"}, dumpWhen: "conn 0 sent 60000", queues: true, wantStates: []string{"CLOSING|LAST_ACK"}},
}

// TestTCPCheckpoint dumps a server with established TCP connections to
// files (the original killed, its connections silent in repair mode, the
// network lock on), restores it on the same host, and checks that every
// message of both directions arrives exactly once, in order, on both
// sides, with no error: the client never notices.
func TestTCPCheckpoint(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Build(t, "tcpstream")
	for _, tc := range tcpStreamCases {
		t.Run(tc.name, func(t *testing.T) {
			port := strconv.Itoa(freeTCPPort(t))
			srv := testutil.Start(t, bin, append([]string{"server", tc.addr, port}, tc.server...)...)
			srv.WaitLine(t, 5*time.Second, 0, "ready")
			cli := testutil.Start(t, bin, append([]string{"client", tc.addr, port}, tc.client...)...)
			_, at := srv.WaitLine(t, 10*time.Second, 0, tc.dumpWhen)
			if tc.queues {
				// Let the queues fill up while both sides stall: the
				// client's reader too (else it may drain the server's
				// send queue just as the dump reads it).
				cli.WaitLine(t, 10*time.Second, 0, "conn 0 recv 100")
				testutil.WaitFor(t, 5*time.Second, "bytes in both queues of a server connection", func() bool {
					return bothQueues(t, port)
				})
			}
			// The states the case is about, reached: a FIN in flight when
			// the line came (a busy machine) is not taken for another
			// state.
			testutil.WaitFor(t, 10*time.Second, fmt.Sprintf("the server's connections in states %v", tc.wantStates), func() bool {
				have := portStates(port)
				for _, s := range tc.wantStates {
					n := 0
					for _, a := range strings.Split(s, "|") {
						n += have[a]
					}
					if n == 0 {
						return false
					}
				}
				return true
			})
			dir, img := dumpKill(t, srv, "")
			checkTCPImage(t, img, tc)
			if img.NetLock == "" {
				t.Errorf("the image names no network lock")
			}
			time.Sleep(100 * time.Millisecond) // the peer retransmits meanwhile
			p := restoreOK(t, dir, srv.Log)
			if st := p.WaitExit(t, 60*time.Second); st.ExitStatus() != 0 {
				t.Errorf("restored server exited with %v", st)
			}
			if st := cli.WaitExit(t, 60*time.Second); st.ExitStatus() != 0 {
				t.Errorf("client exited with %v", st)
			}
			for name, lines := range map[string][]string{"server": p.Lines(t)[at:], "client": cli.Lines(t)} {
				if len(lines) == 0 || lines[len(lines)-1] != "all done" {
					t.Errorf("%s did not finish cleanly; last lines:\n%s", name, strings.Join(lines[max(0, len(lines)-5):], "\n"))
				}
				for _, l := range lines {
					if strings.HasPrefix(l, "error") {
						t.Errorf("%s: %s", name, l)
					}
				}
			}
			checkLockGone(t, img.NetLock)
		})
	}
}

// checkTCPImage checks what the image holds of the connections.
func checkTCPImage(t *testing.T, img *core.Image, tc tcpStreamCase) {
	t.Helper()
	states := map[string]int{}
	queues := false
	for _, f := range img.Process.FDs {
		if f.Socket == nil || f.Socket.TCP == nil {
			continue
		}
		c := f.Socket.TCP
		states[c.State]++
		t.Logf("fd %d: %s %s -> %s send %d (unsent %d) recv %d mss %d wscale %v %d/%d sack %v ts %v",
			f.FD, c.State, f.Socket.Local, f.Socket.Remote, c.SendLen, c.Unsent, c.RecvLen, c.MSS, c.Wscale, c.SndWscale, c.RcvWscale, c.SACK, c.Timestamps)
		if c.SendLen > 0 && c.RecvLen > 0 {
			queues = true
		}
	}
	if len(states) == 0 {
		t.Fatalf("no TCP connection in the image")
	}
	for _, s := range tc.wantStates {
		n := 0
		for _, a := range strings.Split(s, "|") {
			n += states[a]
		}
		if n == 0 {
			t.Errorf("no connection in state %s in the image: %v", s, states)
		}
	}
	if tc.queues && !queues {
		t.Errorf("no connection with bytes in both queues")
	}
}

// checkLockGone fails if the network lock table name is still in the
// test's network namespace.
func checkLockGone(t *testing.T, name string) {
	t.Helper()
	names, err := lockTables("")
	if err != nil {
		t.Errorf("list nftables tables: %v", err)
		return
	}
	if slices.Contains(names, name) {
		t.Errorf("network lock table %s left behind", name)
	}
}

// lockTables lists the tables of family inet named like migrate's network
// locks in the test's network namespace.
func lockTables(string) ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	defer c.CloseLasting()
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	var out []string
	for _, tb := range ts {
		if strings.HasPrefix(tb.Name, "migrate_") {
			out = append(out, tb.Name)
		}
	}
	return out, nil
}

// bothQueues says whether a TCP connection (or a half-closed one) on local port (as
// /proc/net/tcp and tcp6 list it) holds bytes in both its send and its
// receive queue.
// portStates counts the TCP connections on local port port by state, as
// /proc/net/tcp{,6} show them.
func portStates(port string) map[string]int {
	names := map[string]string{"01": "ESTABLISHED", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0B": "CLOSING"}
	p, _ := strconv.Atoi(port)
	out := map[string]int{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(l)
			if len(fs) < 4 || names[fs[3]] == "" {
				continue
			}
			local := fs[1]
			if lp, err := strconv.ParseUint(local[strings.LastIndexByte(local, ':')+1:], 16, 16); err == nil && int(lp) == p {
				out[names[fs[3]]]++
			}
		}
	}
	return out
}

func bothQueues(t *testing.T, port string) bool {
	p, _ := strconv.Atoi(port)
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(l)
			// ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING
			if len(fs) < 5 || !strings.Contains(" 01 04 05 08 09 0B ", " "+fs[3]+" ") {
				continue
			}
			local := fs[1]
			lp, err := strconv.ParseUint(local[strings.LastIndexByte(local, ':')+1:], 16, 16)
			if err != nil || int(lp) != p {
				continue
			}
			q := strings.Split(fs[4], ":") // tx_queue:rx_queue
			if len(q) == 2 && q[0] != "00000000" && q[1] != "00000000" {
				return true
			}
		}
	}
	return false
}
