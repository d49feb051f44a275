package source

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"migrate/core/proc"
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
	if len(res.rs) != 1 || res.rs[0] != good {
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
		if r2 != r {
			t.Fatalf("round trip changed the record: %+v, %+v", r, r2)
		}
	})
}
