package proc

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func TestParseStatusRecorded(t *testing.T) {
	st, err := ParseStatus(bytes.NewReader(readTestdata(t, "recorded/status")))
	if err != nil {
		t.Fatal(err)
	}
	want := Status{
		Name: "a) (b c)", Umask: 0o027, HasUmask: true, State: 'R',
		Tgid: 4722, PID: 4722, PPID: 4672,
		NStgid: []int{4722}, NSpid: []int{4722}, NSpgid: []int{4672}, NSsid: []int{2397},
		Threads: 2,
		ShdPnd:  1 << (10 - 1),         // SIGUSR1 sent to the process
		SigBlk:  1<<(10-1) | 1<<(15-1), // SIGUSR1, SIGTERM
		SigIgn:  1 << (13 - 1),         // SIGPIPE
		SigCgt:  1<<(1-1) | 1<<(33-1),  // SIGHUP, and glibc's SIGCANCEL
		CapPrm:  0x1fffeffffff, CapEff: 0x1fffeffffff, CapBnd: 0x1fffeffffff,
		VmRSS: 1584 << 10, VmSize: 10836 << 10, VmLck: 8 << 10,
		VmHWM: 1584 << 10, RssAnon: 172 << 10, RssShmem: 16 << 10,
	}
	if !reflect.DeepEqual(*st, want) {
		t.Errorf("got  %+v\nwant %+v", *st, want)
	}

	st, err = ParseStatus(bytes.NewReader(readTestdata(t, "recorded/task_status")))
	if err != nil {
		t.Fatal(err)
	}
	if st.Name != "t\n\\) x(" || st.PID != 4723 || st.Tgid != 4722 || st.State != 'S' {
		t.Errorf("thread status %+v", st)
	}

	st, err = ParseStatus(bytes.NewReader(readTestdata(t, "recorded/kthread_status")))
	if err != nil {
		t.Fatal(err)
	}
	if !st.Kthread || st.VmRSS != 0 || st.SigIgn != ^uint64(0) || st.Name != "kthreadd" {
		t.Errorf("kthread status %+v", st)
	}

	st, err = ParseStatus(bytes.NewReader(readTestdata(t, "recorded/zombie_status")))
	if err != nil {
		t.Fatal(err)
	}
	if st.State != 'Z' || st.PPID != 4722 || st.Kthread {
		t.Errorf("zombie status %+v", st)
	}
}

func TestParseStatusNamespaces(t *testing.T) {
	st, err := ParseStatus(bytes.NewReader(readTestdata(t, "hand/status_ns")))
	if err != nil {
		t.Fatal(err)
	}
	want := Status{
		Name: " tab\tlead \\ \n ", Umask: 0o777, HasUmask: true, State: 't',
		Tgid: 17, PID: 18, PPID: 1, TracerPID: 4001,
		UID: [4]uint32{1000, 1001, 1002, 1003}, GID: [4]uint32{2000, 2001, 2002, 4294967295},
		Groups: []uint32{4, 24, 27, 1000},
		NStgid: []int{5017, 17, 1}, NSpid: []int{5018, 18, 2}, NSpgid: []int{5000, 0, 0}, NSsid: []int{5000, 0, 0},
		Threads: 3,
		SigPnd:  0x8000000000000001, SigBlk: 0xfffffffe7ffbfeff, SigCgt: 0x180000000,
		CapBnd: 0x1ffffffffff, CapAmb: 0x400,
		NoNewPrivs: true, Seccomp: 2, SeccompFilters: 3,
		VmSize: 1 << 30, VmRSS: 2 << 20, VmSwap: 12 << 10,
	}
	if !reflect.DeepEqual(*st, want) {
		t.Errorf("got  %+v\nwant %+v", *st, want)
	}
}

func TestParseStatusErrors(t *testing.T) {
	good := "Name:\tx\nState:\tS (sleeping)\nPid:\t5\n"
	tests := []struct {
		name, text, field string
		line              int
	}{
		{"no name", "State:\tS (sleeping)\nPid:\t5\n", "Name", 0},
		{"no state", "Name:\tx\nPid:\t5\n", "State", 0},
		{"no pid", "Name:\tx\nState:\tS (sleeping)\n", "Pid", 0},
		{"no colon", good + "garbage\n", "", 4},
		{"state", good + "State:\tSleeping\n", "State", 4},
		{"uid short", good + "Uid:\t0\t0\t0\n", "Uid", 4},
		{"uid long", good + "Uid:\t0\t0\t0\t0\t0\n", "Uid", 4},
		{"gid range", good + "Gid:\t0\t0\t0\t4294967296\n", "Gid", 4},
		{"groups", good + "Groups:\t1 x\n", "Groups", 4},
		{"nspid", good + "NSpid:\t1\t-\n", "NSpid", 4},
		{"umask", good + "Umask:\t0800\n", "Umask", 4},
		{"sig", good + "SigBlk:\t1ffffffffffffffff\n", "SigBlk", 4},
		{"cap", good + "CapEff:\t-1\n", "CapEff", 4},
		{"bool", good + "NoNewPrivs:\t2\n", "NoNewPrivs", 4},
		{"vmrss", good + "VmRSS:\t12 MB\n", "VmRSS", 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseStatus(strings.NewReader(tt.text))
			checkParseError(t, err, "status", tt.line, tt.field)
		})
	}
}
