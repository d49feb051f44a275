package source

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/transport"
)

const testRecordSession = "0123456789abcdef0123456789abcdef"

// staleRecord is a record of this process, running, whose migrate (its
// owner, this process with another start time) is gone.
func staleRecord(t *testing.T) Record {
	t.Helper()
	st, err := proc.ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	return Record{PID: os.Getpid(), PIDStart: st.StartTime, Owner: os.Getpid(), OwnerStart: st.StartTime + 1,
		Session: testRecordSession, Target: "10.0.0.2:7070", Frozen: time.Unix(1e9, 0).UTC()}
}

// TestStaleRecordsHostile: files of RecordDir that are not records are
// removed, not followed, not waited on: a FIFO (which once would block
// `migrate --to` at its start), a symlink, a large file, unknown keys,
// trailing data, a record under another's name, a target that would
// inject into the printed command. The one true record is found.
func TestStaleRecordsHostile(t *testing.T) {
	dir := t.TempDir()
	old := RecordDir
	RecordDir = dir
	t.Cleanup(func() { RecordDir = old })

	good := staleRecord(t)
	b, err := json.Marshal(good)
	if err != nil {
		t.Fatal(err)
	}
	goodName := filepath.Base(recordPath(good.PID, good.Session))
	if err := os.WriteFile(filepath.Join(dir, goodName), b, 0o600); err != nil {
		t.Fatal(err)
	}
	bad := map[string]func(path string) error{
		"fifo": func(p string) error { return syscall.Mkfifo(p, 0o600) },
		"symlink": func(p string) error {
			return os.Symlink(filepath.Join(dir, goodName), p)
		},
		"large": func(p string) error {
			return os.WriteFile(p, append(b[:len(b)-1], []byte(`,"x":"`+strings.Repeat("a", 1<<20)+`"}`)...), 0o600)
		},
		"unknown key": func(p string) error {
			return os.WriteFile(p, append(b[:len(b)-1], []byte(`,"extra":1}`)...), 0o600)
		},
		"trailing": func(p string) error { return os.WriteFile(p, append(append([]byte{}, b...), "{}"...), 0o600) },
		"target injection": func(p string) error {
			r := good
			r.Target = "x; rm -rf /"
			c, _ := json.Marshal(r)
			return os.WriteFile(p, c, 0o600)
		},
	}
	var names []string
	for what, make := range bad {
		// Named as a record of this process (the name is checked too).
		name := strings.ReplaceAll(what, " ", "-") + ".json"
		if err := make(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	// A true record under another name.
	if err := os.WriteFile(filepath.Join(dir, "1-"+testRecordSession+".json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	names = append(names, "1-"+testRecordSession+".json")

	type result struct {
		rs  []Record
		err error
	}
	done := make(chan result, 1)
	go func() {
		rs, err := StaleRecords()
		done <- result{rs, err}
	}()
	var res result
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("StaleRecords blocked (on the FIFO?)")
	}
	if res.err != nil {
		t.Fatal(res.err)
	}
	if len(res.rs) != 1 || !reflect.DeepEqual(res.rs[0], good) {
		t.Errorf("stale records %+v, want only %+v", res.rs, good)
	}
	for _, n := range names {
		if _, err := os.Lstat(filepath.Join(dir, n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: not removed (%v)", n, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, goodName)); err != nil {
		t.Errorf("the true record: %v", err)
	}
}

// FuzzDecodeRecord: no input makes the record decoder panic, and whatever
// it accepts encodes and decodes to the same record.
func FuzzDecodeRecord(f *testing.F) {
	st := Record{PID: 4321, PIDStart: 123456, Owner: 99, OwnerStart: 77, Session: testRecordSession,
		Target: "[fd00::2]:7070", Frozen: time.Unix(1.7e9, 5).UTC()}
	b, _ := json.Marshal(st)
	f.Add(b)
	f.Add([]byte(`{"pid":1,"owner":1,"session":"` + testRecordSession + `","target":"a:1"}`))
	st.Tree = []RecordedProcess{{PID: 4322, Start: 123457}, {PID: 4323, Start: 123458}}
	b, _ = json.Marshal(st)
	f.Add(b)
	st.Shm = []RecordedSegment{{ID: 32769, Key: 0x4d000123, CPID: 4321, Ctime: 1.7e9}}
	b, _ = json.Marshal(st)
	f.Add(b)
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeRecord(data)
		if err != nil {
			if !errors.Is(err, errNotRecord) {
				t.Fatalf("error %v is not errNotRecord", err)
			}
			return
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := decodeRecord(again)
		if err != nil {
			t.Fatalf("accepted record fails after a round trip: %v", err)
		}
		if !r2.Frozen.Equal(r.Frozen) {
			t.Fatalf("frozen time changed in a round trip: %v, %v", r.Frozen, r2.Frozen)
		}
		r2.Frozen = r.Frozen
		if len(r.Tree) == 0 {
			r.Tree = nil // "tree":[] comes back without the key
		}
		if !reflect.DeepEqual(r2, r) {
			t.Fatalf("round trip changed the record: %+v, %+v", r, r2)
		}
	})
}

// fakeOutcomeTarget listens on loopback and answers every status query
// with outcome. It counts the queries.
func fakeOutcomeTarget(t *testing.T, outcome transport.Outcome) (string, *atomic.Int32) {
	t.Helper()
	l, err := transport.Listen("127.0.0.1:0", transport.Config{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); l.Close(); <-done })
	var queries atomic.Int32
	go func() {
		defer close(done)
		for {
			s, err := l.Accept(ctx)
			if err != nil {
				return
			}
			go func() {
				defer s.Close()
				_, c, err := s.AcceptStream(ctx)
				if err != nil {
					return
				}
				k := transport.NewControl(c)
				defer k.Close()
				m, err := k.Recv(ctx)
				if q, ok := m.(*transport.StatusQuery); err == nil && ok {
					queries.Add(1)
					k.Send(&transport.StatusReply{SessionID: q.SessionID, Outcome: outcome})
				}
			}()
		}
	}()
	return l.Addr().String(), &queries
}

// TestRecoverOnlyRecorded: `migrate recover --session S PID`, with a
// target that says the session's process runs there (so the original is
// to be killed), kills PID only if a record of a migration in session S
// names it with its start time. An unrelated process (no record, or a
// record of an older process with its PID) survives, and the target is
// not even asked.
func TestRecoverOnlyRecorded(t *testing.T) {
	testutil.RequireRoot(t)
	old := RecordDir
	RecordDir = t.TempDir()
	t.Cleanup(func() { RecordDir = old })
	addr, queries := fakeOutcomeTarget(t, transport.OutcomeResumed)
	session := transport.NewSessionID()
	recover := func(pid int) error {
		_, err := Recover(context.Background(), addr, session, pid, transport.Config{Insecure: true}, fixtureLogger(t))
		return err
	}
	alive := func(p *testutil.Proc) bool {
		st, err := testutil.State(p.PID)
		return err == nil && st != 'Z' && st != 'X'
	}

	for _, tc := range []struct {
		name   string
		record func(t *testing.T, pid int)
	}{
		{"no record", func(*testing.T, int) {}},
		{"record of an older process with that PID", func(t *testing.T, pid int) {
			path, err := writeRecord(pid, session, addr, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(path)
			var r Record
			json.Unmarshal(b, &r)
			r.PIDStart--
			b, _ = json.Marshal(r)
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"record of another PID namespace", func(t *testing.T, pid int) {
			path, err := writeRecord(pid, session, addr, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(path)
			var r Record
			json.Unmarshal(b, &r)
			r.PIDNS = "pid:[1]"
			b, _ = json.Marshal(r)
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"record of another session", func(t *testing.T, pid int) {
			if _, err := writeRecord(pid, transport.NewSessionID(), addr, nil, nil); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testutil.Start(t, "/bin/sleep", "1000")
			tc.record(t, p.PID)
			err := recover(p.PID)
			var nr *NotRecordedError
			if !errors.As(err, &nr) || nr.PID != p.PID {
				t.Errorf("recover of an unrelated process %d: %v, want a *NotRecordedError", p.PID, err)
			} else {
				t.Logf("refused: %v", err)
			}
			if !alive(p) {
				t.Errorf("the unrelated process %d was killed", p.PID)
			}
			if n := queries.Load(); n != 0 {
				t.Errorf("the target was asked %d times before the process was checked", n)
			}
		})
	}
	// Bad session IDs are no path to another file.
	p := testutil.Start(t, "/bin/sleep", "1000")
	var nr *NotRecordedError
	if _, err := Recover(context.Background(), addr, "../x", p.PID, transport.Config{Insecure: true}, fixtureLogger(t)); !errors.As(err, &nr) {
		t.Errorf("recover with session ../x: %v, want a *NotRecordedError", err)
	}

	// The process the record names is killed, as the target runs it.
	if _, err := writeRecord(p.PID, session, addr, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := recover(p.PID); err != nil {
		t.Fatalf("recover of the recorded process: %v", err)
	}
	if ws := p.WaitExit(t, short); !ws.Signaled() || ws.Signal() != unix.SIGKILL {
		t.Errorf("the recorded process ended with %v, want killed", ws)
	}
	if _, err := os.Stat(recordPath(p.PID, session)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the record is still there after recover: %v", err)
	}
}

// TestCheckAccess: a process is refused, with an *AccessError, to a caller
// whose real ids differ from its real, effective and saved ids, or when it
// is not dumpable, unless the caller has CAP_SYS_PTRACE.
func TestCheckAccess(t *testing.T) {
	testutil.RequireRoot(t)
	rootProc := testutil.Start(t, "/bin/sleep", "1000")
	// privs drop: started as root, then dropped to 65534: not dumpable.
	dropped := testutil.Start(t, testutil.Build(t, "privs"), "drop", "65534", "65534", "single")
	dropped.WaitLine(t, short, 0, "ready")
	nobody := caller{UID: 65534, GID: 65534}
	for _, tc := range []struct {
		name string
		p    *testutil.Proc
		c    caller
		ok   bool
	}{
		{"root's process, root", rootProc, caller{}, true},
		{"root's process, nobody", rootProc, nobody, false},
		{"root's process, nobody with CAP_SYS_PTRACE", rootProc, caller{UID: 65534, GID: 65534, SysPtrace: true}, true},
		{"nobody's process, not dumpable, nobody", dropped, nobody, false},
		{"nobody's process, other group", dropped, caller{UID: 65534, GID: 1}, false},
		{"nobody's process, root", dropped, caller{}, false},
		{"nobody's process, root with CAP_SYS_PTRACE", dropped, caller{SysPtrace: true}, true},
	} {
		status, err := proc.ReadStatus(tc.p.PID)
		if err != nil {
			t.Fatal(err)
		}
		err = checkAccess(tc.p.PID, status, tc.c)
		var ae *AccessError
		switch {
		case tc.ok && err != nil:
			t.Errorf("%s: %v, want allowed", tc.name, err)
		case !tc.ok && !errors.As(err, &ae):
			t.Errorf("%s: %v, want an *AccessError", tc.name, err)
		case !tc.ok:
			t.Logf("%s: %v", tc.name, err)
		}
	}
}

// TestStaleRecordsOtherNamespace: a record written in another PID
// namespace names processes this migrate cannot see under those numbers:
// StaleRecords neither reports nor removes it (a migrate in a container
// once removed the host's records, and recover then had none to go by).
func TestStaleRecordsOtherNamespace(t *testing.T) {
	old := RecordDir
	RecordDir = t.TempDir()
	t.Cleanup(func() { RecordDir = old })
	session := transport.NewSessionID()
	// PIDs no process has here: a record of this namespace would go.
	r := Record{PID: 1 << 22, Owner: 1<<22 - 1, Session: session, Target: "10.0.0.2:7070", PIDNS: "pid:[1]"}
	b, _ := json.Marshal(r)
	path := recordPath(r.PID, session)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	mine := r
	mine.PID, mine.PIDNS, mine.Session = 1<<22-2, pidNS(), transport.NewSessionID()
	b, _ = json.Marshal(mine)
	minePath := recordPath(mine.PID, mine.Session)
	if err := os.WriteFile(minePath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	rs, err := StaleRecords()
	if err != nil || len(rs) != 0 {
		t.Errorf("StaleRecords: %v, %v; want none", rs, err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("the other namespace's record was removed: %v", err)
	}
	if _, err := os.Stat(minePath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("this namespace's record of a process gone was kept: %v", err)
	}
}
