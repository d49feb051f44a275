package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
)

// postgresBin is where Debian's postgresql package puts the server and
// its tools (one major version installed).
func postgresBin(t *testing.T) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d
		}
	}
	testutil.Unavailable(t, "PostgreSQL is not installed (apt-get install postgresql; `make deps` does it)")
	return ""
}

// pgCluster is a PostgreSQL cluster of a test, run as user postgres.
type pgCluster struct {
	bin, data, sock string
	port            int
	cred            *syscall.Credential
}

// newPGCluster runs initdb into a directory of the test's, as postgres.
func newPGCluster(t *testing.T) *pgCluster {
	t.Helper()
	bin := postgresBin(t)
	u, err := user.Lookup("postgres")
	if err != nil {
		testutil.Unavailable(t, "no user postgres (the postgresql package makes it): %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	root, err := os.MkdirTemp("", "migrate-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	c := &pgCluster{bin: bin, data: filepath.Join(root, "data"), sock: filepath.Join(root, "sock"), port: freeSocketPort(t),
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	if err := os.Mkdir(c.sock, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{root, c.sock} {
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(filepath.Join(bin, "initdb"), "-D", c.data, "-A", "trust", "-U", "postgres", "--no-sync")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	return c
}

// start runs the postmaster (stdio on a log file of the test's).
func (c *pgCluster) start(t *testing.T) *testutil.Proc {
	t.Helper()
	p := testutil.StartWith(t, testutil.Options{Dir: filepath.Dir(c.data), Credential: c.cred}, filepath.Join(c.bin, "postgres"),
		"-D", c.data, "-k", c.sock, "-p", fmt.Sprint(c.port), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off")
	testutil.WaitFor(t, long, "PostgreSQL to accept connections", func() bool {
		if st, err := testutil.State(p.PID); err != nil || st == 'Z' {
			t.Fatalf("postgres exited:\n%s", strings.Join(p.Lines(t), "\n"))
		}
		_, err := c.psql("select 1")
		return err == nil
	})
	return p
}

// psql runs one SQL command through the unix socket and returns its
// unaligned, tuples-only output.
func (c *pgCluster) psql(sql string) (string, error) {
	cmd := exec.Command(filepath.Join(c.bin, "psql"), "-h", c.sock, "-p", fmt.Sprint(c.port), "-U", "postgres", "-d", "postgres", "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("psql %q: %v: %s", sql, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

func (c *pgCluster) must(t *testing.T, sql string) string {
	t.Helper()
	out, err := c.psql(sql)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestProgramPostgres: PostgreSQL as Debian runs it (user postgres; the
// postmaster and its checkpointer, background writer, WAL writer,
// autovacuum launcher and logical replication launcher; a System V
// segment as an interlock and shared anonymous memory for its buffers,
// locks and semaphores) is dumped with its tree and restored: every
// process comes back, checked against the image, with its data, and takes
// new connections (each a backend forked by the restored postmaster) and
// writes.
func TestProgramPostgres(t *testing.T) {
	testutil.RequireRoot(t)
	c := newPGCluster(t)
	p := c.start(t)
	c.must(t, "create table t(id int primary key, v text)")
	c.must(t, "insert into t select g, md5(g::text) from generate_series(1, 20000) g")
	sum := c.must(t, "select count(*), md5(string_agg(v, ',' order by id)) from t")
	// Its auxiliary processes, once the backends of psql are gone.
	var aux map[int]string
	testutil.WaitFor(t, long, "the postmaster to have only its auxiliary processes", func() bool {
		aux = pgChildren(t, p.PID)
		for _, name := range aux {
			if !strings.Contains(name, "launcher") && !strings.Contains(name, "writer") && !strings.Contains(name, "checkpointer") {
				return false
			}
		}
		return len(aux) >= 4
	})
	children := make([]int, 0, len(aux))
	for pid := range aux {
		children = append(children, pid)
	}
	dir := t.TempDir()
	rep, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: dir, Tree: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	t.Logf("dumped %d processes, %d pages", rep.Processes, rep.Pages)
	p.Reap(t)
	for _, pid := range children {
		testutil.ReapOrphan(t, pid)
	}
	img, err := core.ReadImage(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Shm) == 0 {
		t.Errorf("image holds no System V segment; PostgreSQL makes one")
	}
	r := restoreOK(t, dir, p.Log)
	t.Cleanup(func() {
		// A fast shutdown: the postmaster ends its children and exits.
		unix.Kill(r.PID, unix.SIGINT)
		r.WaitExit(t, long)
		for _, pid := range children {
			testutil.ReapOrphan(t, pid)
		}
	})
	if got := pgChildren(t, r.PID); fmt.Sprint(got) != fmt.Sprint(aux) {
		t.Errorf("restored postmaster's children %v, before %v", got, aux)
	}
	if got := c.must(t, "select count(*), md5(string_agg(v, ',' order by id)) from t"); got != sum {
		t.Errorf("after restore %q, before %q", got, sum)
	}
	c.must(t, "insert into t values (20001, 'after')")
	if got := c.must(t, "select v from t where id = 20001"); got != "after" {
		t.Errorf("a row written after the restore reads %q", got)
	}
	c.must(t, "checkpoint")
}

// pgChildren lists the children of the postmaster pid with the title
// PostgreSQL gives each ("postgres: checkpointer ").
func pgChildren(t *testing.T, pid int) map[int]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
	for _, f := range strings.Fields(string(b)) {
		k, _ := strconv.Atoi(f)
		if st, err := testutil.State(k); err != nil || st == 'Z' {
			continue
		}
		title, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", k))
		out[k] = strings.TrimSpace(strings.ReplaceAll(string(title), "\x00", " "))
	}
	return out
}
