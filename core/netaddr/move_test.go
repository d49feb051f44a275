package netaddr

import (
	"context"
	"testing"

	"github.com/procmig/migrate/core/hook"
)

// TestMover: as built-in hooks, the source's Mover deletes the address
// after the dump and an abort puts it back; the target's adds it before the
// resume and an abort deletes it; an address that was already there on the
// target is left by its abort; a finished session is forgotten.
func TestMover(t *testing.T) {
	enterNetNS(t)
	addVeth(t, "mv0", "mv1")
	a := mustParse(t, "10.231.9.100/32@mv0")
	run := func(s *hook.Set, stage hook.Stage, sess string) {
		t.Helper()
		if err := s.Run(context.Background(), stage, map[string]string{"MIGRATE_SESSION": sess}); err != nil {
			t.Fatalf("%s %s: %v", s.Role(), stage, err)
		}
	}
	has := func(want bool, what string) {
		t.Helper()
		if ok, err := Has(a); err != nil || ok != want {
			t.Fatalf("%s: Has = %v, %v; want %v", what, ok, err, want)
		}
	}
	src, _ := hook.Parse(nil, hook.Source)
	dst, _ := hook.Parse(nil, hook.Target)
	if err := NewMover([]Addr{a}, nil).Install(src); err != nil {
		t.Fatal(err)
	}
	if err := NewMover([]Addr{a}, nil).Install(dst); err != nil {
		t.Fatal(err)
	}

	// The source side: released, then back on an abort.
	if _, err := Add(a); err != nil {
		t.Fatal(err)
	}
	run(src, hook.PostDump, "s1")
	has(false, "source after post-dump")
	run(src, hook.Abort, "s1")
	has(true, "source after abort")
	// Committed: released and forgotten; a later abort of it changes nothing.
	run(src, hook.PostDump, "s2")
	run(src, hook.PostResume, "s2")
	run(src, hook.Abort, "s2")
	has(false, "source after a commit")

	// The target side: taken, then released on an abort.
	run(dst, hook.PreResume, "t1")
	has(true, "target after pre-resume")
	run(dst, hook.Abort, "t1")
	has(false, "target after abort")
	// Already there: taken (nothing to add), and left there by an abort.
	if _, err := Add(a); err != nil {
		t.Fatal(err)
	}
	run(dst, hook.PreResume, "t2")
	run(dst, hook.Abort, "t2")
	has(true, "target abort of an address it did not add")

	// A link that does not exist fails the stage, naming it.
	bad, _ := hook.Parse(nil, hook.Target)
	NewMover([]Addr{mustParse(t, "10.231.9.101/32@nosuch9")}, nil).Install(bad)
	if err := bad.Run(context.Background(), hook.PreResume, nil); err == nil {
		t.Fatal("pre-resume on a missing link did not fail")
	} else {
		t.Logf("missing link: %v", err)
	}
}
