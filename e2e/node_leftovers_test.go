package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
)

// TestNodeLeftovers: a cluster whose process was killed (a crashed test
// run) leaves its namespaces and services behind; the next cluster.New
// removes them (their processes killed, the namespaces deleted), and only
// them: the new cluster, and a live one of another process, stay.
func TestNodeLeftovers(t *testing.T) {
	if os.Getenv("MIGRATE_NODE_HELPER") != "" {
		nodeHelper()
		return
	}
	live := newCluster(t, cluster.Options{}) // a live run's: must stay

	// The helper: this test binary, building a cluster, then killed.
	cmd := exec.Command(os.Args[0], "-test.run=^TestNodeLeftovers$")
	cmd.Env = append(os.Environ(), "MIGRATE_NODE_HELPER=1", "MIGRATE_BIN="+buildMigrate(t))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := readLineTimeout(out, long)
	if err != nil || !strings.HasPrefix(line, "up ") {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the helper said %q, %v", line, err)
	}
	f := strings.Fields(line) // up ID SERVEPID SERVEPID
	id := f[1]
	// Its children (the services' unshare), and their children (the
	// services) when the leftovers are killed, become the test process's
	// (its subreaper's): the test reaps them at the end.
	var orphans []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", cmd.Process.Pid))
	for _, task := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", cmd.Process.Pid, task.Name()))
		for _, k := range strings.Fields(string(b)) {
			var n int
			fmt.Sscan(k, &n)
			orphans = append(orphans, n)
		}
	}
	for _, pid := range f[2:] {
		var n int
		if _, err := fmt.Sscan(pid, &n); err != nil {
			t.Fatal(err)
		}
		orphans = append(orphans, n)
	}
	cmd.Process.Kill()
	cmd.Wait()
	t.Cleanup(func() {
		for _, k := range orphans {
			testutil.ReapOrphan(t, k)
		}
	})
	left := netnsWith(t, cluster.Prefix+id)
	if len(left) != 4 {
		t.Fatalf("the killed run left namespaces %v, want 4 (switch, a, b, client)", left)
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), cluster.Prefix+id+"-*"))
	if len(dirs) != 1 {
		t.Fatalf("the killed run left directories %v, want 1", dirs)
	}

	c := newCluster(t, cluster.Options{})
	if got := netnsWith(t, cluster.Prefix+id); len(got) != 0 {
		t.Errorf("namespaces of the killed run still there: %v", got)
	}
	if _, err := os.Stat(dirs[0]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the directory of the killed run is still there: %v", err)
	}
	for _, pid := range f[2:] {
		var n int
		if _, err := fmt.Sscan(pid, &n); err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, short, "the killed run's service "+pid+" to end", func() bool {
			st, err := testutil.State(n)
			return err != nil || st == 'Z'
		})
	}
	for _, cl := range []*cluster.Cluster{live, c} {
		if got := netnsWith(t, cluster.Prefix+cl.ID+"-"); len(got) != 4 {
			t.Errorf("cluster %s has namespaces %v, want 4", cl.ID, got)
		}
		if _, err := os.Stat(cl.SecretFile); err != nil {
			t.Errorf("cluster %s: %v", cl.ID, err)
		}
		for _, n := range []*cluster.Node{cl.A, cl.B} {
			if st, err := testutil.State(n.ServePID); err != nil || st == 'Z' {
				t.Errorf("cluster %s: the service of node %s (pid %d) is gone", cl.ID, n, n.ServePID)
			}
		}
	}
}

// nodeHelper builds a cluster, says "up ID SERVEPID SERVEPID", and waits
// (a minute at most) to be killed.
func nodeHelper() {
	c, err := cluster.New(cluster.Options{Migrate: os.Getenv("MIGRATE_BIN")})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("up", c.ID, c.A.ServePID, c.B.ServePID)
	time.Sleep(time.Minute)
	c.Close()
	os.Exit(1)
}

func readLineTimeout(r interface{ Read([]byte) (int, error) }, d time.Duration) (string, error) {
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := bufio.NewReader(r).ReadString('\n')
		ch <- res{strings.TrimSpace(s), err}
	}()
	select {
	case r := <-ch:
		return r.s, r.err
	case <-time.After(d):
		return "", fmt.Errorf("nothing within %v", d)
	}
}

// netnsWith lists the named network namespaces starting with prefix.
func netnsWith(t *testing.T, prefix string) []string {
	t.Helper()
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}
