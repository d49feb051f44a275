package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/e2e/pgwire"
	"github.com/procmig/migrate/internal/testutil"
)

// pgPort is PostgreSQL's port on the cluster's service address.
const pgPort = 5432

// TestNodeProgramPostgres: PostgreSQL (run as user postgres; the
// postmaster and its checkpointer, background writer, WAL writer,
// autovacuum launcher and logical replication launcher, and the backend
// of each connection; a System V segment as an interlock, shared
// anonymous memory for its buffers) listens on the VIP and a unix socket
// of node A. A client on the client node runs, over ONE connection, an
// INSERT of row N and a SELECT count(*) (must be N) every few
// milliseconds, while the whole tree moves live to B and back: every
// answer is right, the connection is never dialled again (its backend,
// pg_backend_pid(), is the same), no row is lost, pg_stat_activity lists
// the same sessions after, and the unix socket takes new connections on
// each node. The System V segment goes with the tree: the node left has
// none.
func TestNodeProgramPostgres(t *testing.T) {
	pg := newPGCluster(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		testutil.Unavailable(t, "setpriv (util-linux) is needed to run postgres as its user: %v", err)
	}
	c := newCluster(t, cluster.Options{})
	requireHooks(t, c)
	pg.port = pgPort
	// The client node may connect (trust, as initdb -A trust made local).
	hba, err := os.OpenFile(filepath.Join(pg.data, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fmt.Fprintf(hba, "host all all %s trust\n", cluster.Subnet)
	if cerr := hba.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	// Each node has a socket directory of its own, as a host would (a
	// tmpfs in its mount namespace): the unix socket is made anew there.
	for _, n := range []*cluster.Node{c.A, c.B} {
		opts := fmt.Sprintf("mode=0700,uid=%d,gid=%d", pg.cred.Uid, pg.cred.Gid)
		if out, err := n.Command("mount", "-t", "tmpfs", "-o", opts, "pgsock", pg.sock).CombinedOutput(); err != nil {
			t.Fatalf("node %s: mount a tmpfs on %s: %v: %s", n, pg.sock, err, out)
		}
	}
	p, err := c.A.Start(cluster.StartOptions{Dir: filepath.Dir(pg.data)}, setpriv,
		"--reuid", fmt.Sprint(pg.cred.Uid), "--regid", fmt.Sprint(pg.cred.Gid), "--clear-groups", "--",
		filepath.Join(pg.bin, "postgres"), "-D", pg.data, "-k", pg.sock, "-p", fmt.Sprint(pgPort),
		"-c", "listen_addresses="+c.VIP.String(), "-c", "fsync=off")
	if err != nil {
		t.Fatal(err)
	}
	logOnFailure(t, c, p.Log)
	t.Cleanup(func() { p.Stop() })
	addr := net.JoinHostPort(c.VIP.String(), fmt.Sprint(pgPort))
	admin := dialNodePG(t, c.Client, addr)
	comm := procComm(t, p.PID)
	admin.mustQuery(t, "create table t(id int primary key, v text)")

	conn := dialNodePG(t, c.Client, addr)
	pid := conn.mustValue(t, "select pg_backend_pid()")
	const activity = "select pid, usename, datname, client_addr, backend_start, backend_type from pg_stat_activity order by pid"
	before := conn.mustQuery(t, activity)
	load := &pgLoad{c: conn.Conn, stop: make(chan struct{}), done: make(chan struct{})}
	go load.run(time.Now().Add(2*time.Minute), 200000)
	t.Cleanup(load.finish)
	load.waitMore(t, 100)
	load.takeGap()
	for _, step := range roundTrip(c) {
		from, to := step[0], step[1]
		kids := pgTree(t, from, p.NSPID)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		res, err := c.Migrate(ctx, from, to, p.NSPID, "--tree")
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
		load.waitMore(t, 100)
		gap, _ := load.takeGap()
		t.Logf("%s -> %s: %d processes, %d rounds, %d bytes on the wire (RSS %d); downtime %.1f ms (target %.1f ms), total %.1f ms; longest gap between two answers %v",
			from, to, 1+len(kids), len(res.Rounds), res.BytesWire, res.RSSBytes, res.DowntimeMS, res.TargetDowntimeMS, res.TotalMS, gap.Round(100*time.Microsecond))
		var rep struct {
			Frozen []struct {
				Name string  `json:"name"`
				MS   float64 `json:"ms"`
			} `json:"frozen_steps"`
			Target []struct {
				Name string  `json:"name"`
				MS   float64 `json:"ms"`
			} `json:"target_steps"`
		}
		if json.Unmarshal([]byte(res.Stdout), &rep) == nil {
			t.Logf("where the downtime went: source %v; target %v", rep.Frozen, rep.Target)
		}
		// The tree, whole, on the target alone.
		testutil.WaitFor(t, short, fmt.Sprintf("postgres's tree on %s alone", to), func() bool {
			left, err := from.Find(comm)
			return err == nil && len(left) == 0
		})
		if got := pgTree(t, to, p.NSPID); !slices.Equal(got, kids) {
			t.Errorf("postmaster's children on %s %v, on %s before %v", to, got, from, kids)
		}
		checkVIPOn(t, c, to)
		// The segment went with the tree: none left where it was.
		if out, err := from.Command("cat", "/proc/sysvipc/shm").Output(); err != nil {
			t.Fatal(err)
		} else if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); len(lines) > 1 {
			t.Errorf("System V segments left on %s after the tree left:\n%s", from, out)
		}
		if out, err := to.Command("cat", "/proc/sysvipc/shm").Output(); err != nil {
			t.Fatal(err)
		} else if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); len(lines) != 2 {
			t.Errorf("System V segments on %s, where postgres runs, want its one:\n%s", to, out)
		}
		// The unix socket takes a new connection (a new backend).
		psql := to.Command(filepath.Join(pg.bin, "psql"), "-h", pg.sock, "-p", fmt.Sprint(pgPort), "-U", "postgres", "-d", "postgres", "-XAtq", "-c", "select count(*) > 0 from t")
		if out, err := psql.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "t" {
			t.Errorf("through the unix socket on %s: %q, %v", to, out, err)
		}
		// Its backend gone, the tree is what it was (for the next move).
		testutil.WaitFor(t, short, "the unix socket's backend to end", func() bool {
			return slices.Equal(pgTree(t, to, p.NSPID), kids)
		})
	}
	load.finish()
	n, err := load.result()
	t.Logf("client: %d rounds of INSERT and SELECT count(*) over one connection", n)
	if err != nil {
		t.Fatalf("the client, after %d rounds: %v", n, err)
	}
	if got := conn.mustValue(t, "select count(*) from t"); got != strconv.FormatInt(n, 10) {
		t.Errorf("%s rows after the round trip, the client inserted %d", got, n)
	}
	if got := conn.mustValue(t, "select pg_backend_pid()"); got != pid {
		t.Errorf("the connection's backend is %s after the round trip, was %s", got, pid)
	}
	if after := conn.mustQuery(t, activity); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("pg_stat_activity after the round trip\n%q\nbefore\n%q", after, before)
	}
	admin.mustQuery(t, "checkpoint")
}

// pgTree lists, sorted, the PIDs (in node n) of the children of the
// postmaster nspid.
func pgTree(t *testing.T, n *cluster.Node, nspid int) []int {
	t.Helper()
	ps, err := n.Procs()
	if err != nil {
		t.Fatal(err)
	}
	var parent int
	for _, p := range ps {
		if p.NSPID == nspid {
			parent = p.PID
		}
	}
	if parent == 0 {
		t.Fatalf("no process %d on %s", nspid, n)
	}
	var kids []int
	for _, p := range ps {
		if p.PPID == parent && p.State != 'Z' {
			kids = append(kids, p.NSPID)
		}
	}
	slices.Sort(kids)
	return kids
}

// nodePG is a PostgreSQL connection of a test.
type nodePG struct{ *pgwire.Conn }

// dialNodePG connects from node n to PostgreSQL at addr as postgres,
// retrying until it answers (it may be starting).
func dialNodePG(t *testing.T, n *cluster.Node, addr string) *nodePG {
	t.Helper()
	var pc *pgwire.Conn
	var last error
	if !testutil.Poll(long, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		nc, err := n.Dial(ctx, "tcp", addr)
		if err != nil {
			last = err
			return false
		}
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		if pc, err = pgwire.Connect(nc, "postgres", "postgres"); err != nil {
			last = err
			return false
		}
		if _, err := pc.Value("select 1"); err != nil {
			last = err
			pc.Close()
			return false
		}
		nc.SetDeadline(time.Time{})
		return true
	}) {
		t.Fatalf("postgres at %s from node %s: %v", addr, n, last)
	}
	pc.Timeout = pgOpTimeout
	t.Cleanup(func() { pc.Close() })
	return &nodePG{pc}
}

func (c *nodePG) mustQuery(t *testing.T, sql string) [][]string {
	t.Helper()
	rows, err := c.Query(sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return rows
}

func (c *nodePG) mustValue(t *testing.T, sql string) string {
	t.Helper()
	v, err := c.Value(sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

// pgOpTimeout bounds one query of the test's clients.
const pgOpTimeout = 10 * time.Second

// pgLoad is the steady client of TestNodeProgramPostgres: rounds of
// INSERT row N and SELECT count(*) (must be N) over one connection, a
// couple of milliseconds apart. The first error ends it (the connection
// is never dialled again).
type pgLoad struct {
	c          *pgwire.Conn
	stop, done chan struct{}
	stopOnce   sync.Once

	mu       sync.Mutex
	rounds   int64
	err      error
	last     time.Time // of the last answer
	maxGap   time.Duration
	maxGapAt time.Time
}

func (l *pgLoad) run(deadline time.Time, max int64) {
	defer close(l.done)
	l.mu.Lock()
	l.last = time.Now()
	l.mu.Unlock()
	for i := int64(1); i <= max && time.Now().Before(deadline); i++ {
		select {
		case <-l.stop:
			return
		default:
		}
		err := l.round(i)
		now := time.Now()
		l.mu.Lock()
		if gap := now.Sub(l.last); gap > l.maxGap {
			l.maxGap, l.maxGapAt = gap, now
		}
		l.last = now
		if err != nil {
			l.err = fmt.Errorf("round %d: %w", i, err)
			l.mu.Unlock()
			return
		}
		l.rounds = i
		l.mu.Unlock()
		time.Sleep(2 * time.Millisecond)
	}
}

func (l *pgLoad) round(i int64) error {
	if _, err := l.c.Query(fmt.Sprintf("insert into t values (%d, 'row %d')", i, i)); err != nil {
		return err
	}
	got, err := l.c.Value("select count(*) from t")
	if err != nil {
		return err
	}
	if got != strconv.FormatInt(i, 10) {
		return fmt.Errorf("count(*) is %s after %d inserts", got, i)
	}
	return nil
}

// waitMore waits until the client did n more rounds, or failed.
func (l *pgLoad) waitMore(t *testing.T, n int64) {
	t.Helper()
	l.mu.Lock()
	want := l.rounds + n
	l.mu.Unlock()
	testutil.WaitFor(t, long, fmt.Sprintf("%d more rounds of the client", n), func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.err != nil {
			t.Fatalf("the client: %v", l.err)
		}
		return l.rounds >= want
	})
}

// takeGap returns the longest gap since the last call, and when it ended.
func (l *pgLoad) takeGap() (time.Duration, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	g, at := l.maxGap, l.maxGapAt
	l.maxGap = 0
	return g, at
}

func (l *pgLoad) finish() {
	l.stopOnce.Do(func() { close(l.stop) })
	<-l.done
}

func (l *pgLoad) result() (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rounds, l.err
}
