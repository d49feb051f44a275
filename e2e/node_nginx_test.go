package e2e

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
)

// TestNodeProgramNginx: nginx as Debian runs it (Debian's nginx-light: a
// master as root, 2 workers as www-data) serves a file on the VIP of node
// A to a client on the client node that fetches it in a loop over
// keep-alive connections, while the tree moves live to B and back: every
// request is answered right, and after each move the master has its PID,
// its children are the same workers with their PIDs, running as www-data,
// all on the target alone.
func TestNodeProgramNginx(t *testing.T) {
	bin := requireNginx(t)
	www, err := user.Lookup("www-data")
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, cluster.Options{Hooks: cluster.HooksOn})
	requireHooks(t, c)
	body := strings.Repeat("moved live between two nodes with its workers\n", 500)
	const port = 8080
	work := nginxSite(t, body, fmt.Sprint(port), "keepalive_requests 100000;")
	p, err := c.A.Start(cluster.StartOptions{Dir: work}, bin, "-p", work, "-e", filepath.Join(work, "error.log"), "-c", filepath.Join(work, "nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	logOnFailure(t, c, filepath.Join(work, "error.log"))
	t.Cleanup(func() { p.Stop() })
	// The workers, once both run as www-data (they start as root).
	workers := func(n *cluster.Node) []int {
		kids := pgTree(t, n, p.NSPID)
		var out []int
		for _, k := range kids {
			if nodeProcUID(t, n, k) == www.Uid {
				out = append(out, k)
			}
		}
		return out
	}
	testutil.WaitFor(t, long, "nginx's 2 workers, as www-data", func() bool { return len(workers(c.A)) == 2 })
	testutil.WaitFor(t, long, "nginx to answer through the VIP", func() bool {
		got, err := nodeHTTPGet(c.Client, vipURL(c, port)+"/index.html", time.Second)
		return err == nil && got == body
	})
	before := workers(c.A)
	comm := procComm(t, p.PID)
	l := &httpLoad{node: c.Client, base: vipURL(c, port), workers: 3, keepAlive: true, pause: 2 * time.Millisecond,
		request: func(w, i int) (string, string) { return "/index.html", body },
		alive:   processAlive(c, comm, p.NSPID, p.Log)}
	l.start(t)
	l.waitEach(t, 20)
	l.takeGap()
	for _, step := range roundTrip(c) {
		from, to := step[0], step[1]
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		res, err := c.Migrate(ctx, from, to, p.NSPID)
		cancel()
		if err != nil {
			stderr := ""
			if res != nil {
				stderr = res.Stderr
			}
			t.Fatalf("migrate %s -> %s: %v\nstderr:\n%s", from, to, err, stderr)
		}
		if res.Outcome != "resumed" || res.PID != p.NSPID || len(res.Rounds) < 2 {
			t.Fatalf("migrate %s -> %s: report %+v", from, to, res)
		}
		checkVIPOn(t, c, to)
		// The tree on the target alone: the master and its workers.
		for _, n := range []*cluster.Node{from, to} {
			ps, err := n.Find(comm)
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			if n == to {
				want = 3
			}
			if len(ps) != want {
				t.Errorf("after %s -> %s: %d %s processes on %s, want %d: %+v", from, to, len(ps), comm, n, want, ps)
			}
		}
		l.waitEach(t, 20)
		gap, _ := l.takeGap()
		t.Logf("%s -> %s: %d processes; longest wait of a client between two answers %v; migrate's downtime %.1f ms (target %.1f ms)",
			from, to, 3, gap.Round(100*time.Microsecond), res.DowntimeMS, res.TargetDowntimeMS)
		if got := workers(to); !slices.Equal(got, before) {
			t.Errorf("after %s -> %s: the master's workers as www-data are %v, were %v", from, to, got, before)
		}
		if left := pgTree(t, to, p.NSPID); len(left) != 2 {
			t.Errorf("after %s -> %s: the master has children %v, want its 2 workers", from, to, left)
		}
	}
	l.finish()
	t.Logf("clients: %s", l.status())
	l.checkNoErrors(t)
}

// nodeProcUID is the real user ID of process nspid of node n, as text.
func nodeProcUID(t *testing.T, n *cluster.Node, nspid int) string {
	t.Helper()
	ps, err := n.Procs()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if p.NSPID == nspid {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.PID))
			if err != nil {
				return ""
			}
			for _, l := range strings.Split(string(b), "\n") {
				if f, ok := strings.CutPrefix(l, "Uid:"); ok {
					if ids := strings.Fields(f); len(ids) > 0 {
						return ids[0]
					}
				}
			}
		}
	}
	return ""
}
