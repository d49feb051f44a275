package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/testutil"
)

// TestTreeSharedFileTracers: a regular file's open description and a
// pipe's write end, shared by a parent and four children (filetree), come
// back as one description each when the tree's fds are installed by
// several tracers at the same time: every process writes at the offset
// the one before left (one offset), the locks of the description and its
// O_NONBLOCK are there once (the restore's check compares each fd's and
// that the fds share their description, kcmp), and the children's bytes
// reach the parent through the one pipe.
func TestTreeSharedFileTracers(t *testing.T) {
	testutil.RequireRoot(t)
	requireCPUs(t, 2)
	const n = 4
	data := filepath.Join(t.TempDir(), "shared")
	p := testutil.Start(t, testutil.Build(t, "filetree"), data, strconv.Itoa(n))
	ready, _ := p.WaitLine(t, long, 0, "ready")
	var kids []int
	for _, s := range strings.Split(field(t, ready, "children"), ",") {
		k, err := strconv.Atoi(s)
		if err != nil {
			t.Fatal(err)
		}
		kids = append(kids, k)
	}
	t.Cleanup(func() {
		p.Stop(t)
		for _, k := range kids {
			testutil.ReapOrphan(t, k)
		}
	})
	p.WaitTick(t, long, 2)
	// One child writes before the dump: the offset moves for all.
	pos := int64(len("parent\n"))
	write := func(q *testutil.Proc, name string) {
		t.Helper()
		from := len(p.Lines(t))
		q.Signal(t, unix.SIGUSR1)
		l, _ := p.WaitLine(t, short, from, "wrote "+name+" ")
		pos += int64(len(name) + 1)
		if got := field(t, l, "pos"); got != strconv.FormatInt(pos, 10) {
			t.Errorf("%q: %s wrote at another offset than the one the others left (want pos=%d)", l, name, pos)
			pos, _ = strconv.ParseInt(got, 10, 64)
		}
		if strings.HasPrefix(name, "child-") {
			if l, _ := p.WaitLine(t, short, from, "pipe got="); l != "pipe got="+name[len("child-"):] {
				t.Errorf("%q, want the parent to read %s's byte from the pipe", l, name)
			}
		}
	}
	write(&testutil.Proc{PID: kids[0], Log: p.Log}, "child-1")
	img, dir := dumpTreeOf(t, p, kids)
	shared := 0
	for _, q := range img.Tree {
		for _, fd := range q.FDs {
			if fd.Key != "" {
				shared++
			}
		}
	}
	if shared < 2*n {
		t.Fatalf("%d fds of the children share a description in the image, want the file's and the pipe's in each of %d", shared, n)
	}
	if tracers := buildTraced(t, dir, img, kids); tracers < 2 {
		t.Errorf("the tree of %d processes was traced by %d thread, want one per CPU", 1+n, tracers)
	}
	r := testutil.Adopt(t, img.Process.PID, p.Log)
	want := "parent\nchild-1\n"
	for i, k := range kids[1:] {
		name := fmt.Sprintf("child-%d", i+2)
		write(&testutil.Proc{PID: k, Log: p.Log}, name)
		want += name + "\n"
	}
	write(r, "parent-again")
	want += "parent-again\n"
	if got, err := os.ReadFile(data); err != nil || string(got) != want {
		t.Errorf("the shared file holds %q (%v), want %q: each write after the one before", got, err, want)
	}
}
