package target

import (
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/testutil"
)

// TestCheckUserNS: the check of a container's user namespace finds a
// process in another one than the image's maps and setgroups say, and one
// in migrate's own; it finds nothing in one as the image has it.
func TestCheckUserNS(t *testing.T) {
	testutil.RequireRoot(t)
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		testutil.Unavailable(t, "unshare (util-linux) is not installed: %v", err)
	}
	p := testutil.Start(t, unshare, "--user", "--map-root-user", "--uts", "sleep", "600")
	// Once it runs sleep: unshare makes the namespace, then writes its
	// uid_map, setgroups and gid_map, then execs. In the namespace alone,
	// it could be read with the uid map written and not the gid map (it
	// was, on a loaded machine).
	testutil.WaitFor(t, 10*time.Second, "sleep in its user namespace", func() bool {
		a, _ := proc.NamespaceOf("/proc/self/ns/user")
		b, err := proc.NamespaceOf("/proc/" + strconv.Itoa(p.PID) + "/ns/user")
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/comm")
		return err == nil && a != b && string(comm) == "sleep\n"
	})
	all := []*restorer{{pid: p.PID, proc: &core.Process{PID: p.PID}}}
	same := &core.UserNamespace{UIDMap: []core.IDMap{{Inside: 0, Outside: 0, Count: 1}}, GIDMap: []core.IDMap{{Inside: 0, Outside: 0, Count: 1}}, SetGroups: "deny"}
	if d := checkUserNS(all, same); len(d) != 0 {
		t.Errorf("differences in a user namespace as the image has it: %v", d)
	}
	other := &core.UserNamespace{UIDMap: []core.IDMap{{Inside: 0, Outside: 100000, Count: 65536}}, GIDMap: []core.IDMap{{Inside: 0, Outside: 0, Count: 1}, {Inside: 1, Outside: 100000, Count: 5}}, SetGroups: "allow"}
	var what []string
	for _, d := range checkUserNS(all, other) {
		what = append(what, d.What)
	}
	for _, w := range []string{"user namespace uid_map", "user namespace gid_map", "user namespace setgroups"} {
		if !slices.Contains(what, w) {
			t.Errorf("differences %v lack %q", what, w)
		}
	}
	self := []*restorer{{pid: os.Getpid(), proc: &core.Process{PID: os.Getpid()}}}
	if d := checkUserNS(self, same); len(d) == 0 || d[0].What != "user namespace" {
		t.Errorf("a process in migrate's user namespace: %v", d)
	}
}
