package target

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/testutil"
)

func TestHuskRunsAndPauses(t *testing.T) {
	cmd, _, err := startHusk(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var st string
	for i := 0; i < 100; i++ {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/stat")
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		st = strings.Fields(s[strings.LastIndexByte(s, ')')+1:])[0]
		if st == "S" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("husk state %q, want S (sleeping in pause)", st)
}

// The husk makes a time namespace for its children itself (the way on a
// kernel that refuses Go's fork/exec into one): the process it forks is
// in a namespace of its own with the offsets, the husk in the test's.
func TestHuskTimeNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := os.Stat("/proc/self/ns/time"); err != nil {
		testutil.Unavailable(t, "time namespaces (CONFIG_TIME_NS): %v", err)
	}
	cmd, inNS, err := startHusk(nil)
	if err != nil || inNS {
		t.Fatalf("start husk: %v (in a namespace: %v)", err, inNS)
	}
	off := core.TimeOffsets{Monotonic: 1234e9 + 5, Boottime: -77e9}
	tr := ptrace.NewTracer()
	defer tr.Close()
	var hp, child *ptrace.Proc
	pid := testutil.FreePID(t)
	err = tr.Do(func() error {
		var err error
		if hp, err = tr.SeizeOwned(cmd.Process.Pid); err != nil {
			return err
		}
		hp.SetGadget(huskSyscall)
		if err := huskTimeNamespace(hp, off); err != nil {
			return err
		}
		child, err = forkPID(hp, pid, 0, pid, 0)
		return err
	})
	if err != nil {
		if hp != nil {
			hp.Kill(true)
		}
		waitHusk(cmd)
		t.Fatal(err)
	}
	defer func() {
		child.Kill(false)
		hp.Kill(true)
		waitHusk(cmd)
		testutil.ReapOrphan(t, pid)
	}()
	mine, _ := os.Readlink("/proc/self/ns/time")
	husk, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/time", cmd.Process.Pid))
	ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/time", pid))
	if husk != mine || ns == mine {
		t.Errorf("time namespaces: the test's %s, the husk's %s, its child's %s: want the child's alone another", mine, husk, ns)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/timens_offsets", pid))
	if err != nil || strings.Join(strings.Fields(string(b)), " ") != "monotonic 1234 5 boottime -77 0" {
		t.Errorf("the child's time offsets %q (%v), want %v", b, err, off)
	}
}
