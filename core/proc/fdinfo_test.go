package proc

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func parseFDInfoFile(t *testing.T, name string) *FDInfo {
	t.Helper()
	fi, err := ParseFDInfo(bytes.NewReader(readTestdata(t, "recorded/fdinfo_"+name)))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return fi
}

func TestParseFDInfoRecorded(t *testing.T) {
	tests := []struct {
		name  string
		want  FDInfo
		extra map[string]string
	}{
		{"regular", FDInfo{Pos: 3, Flags: oLargefile, MntID: 27, Ino: 611}, nil},
		{"append_locked", FDInfo{Pos: 6, Flags: oLargefile | unix.O_APPEND | unix.O_WRONLY, MntID: 27, Ino: 9979065},
			map[string]string{"lock": "1: FLOCK  ADVISORY  WRITE 4722 fe:00:9979065 0 EOF"}},
		{"eventfd", FDInfo{Flags: unix.O_CLOEXEC | unix.O_NONBLOCK | unix.O_RDWR, MntID: 17, Ino: 24,
			EventfdCount: 42, HasEventfd: true, EventfdID: 1}, nil},
		{"eventfd_semaphore", FDInfo{Flags: unix.O_RDWR, MntID: 17, Ino: 24,
			EventfdCount: 7, HasEventfd: true, EventfdID: 2, EventfdSemaphore: true}, nil},
		{"pipe_read", FDInfo{Flags: unix.O_NONBLOCK, MntID: 16, Ino: 7676}, nil},
		{"pipe_write", FDInfo{Flags: unix.O_NONBLOCK | unix.O_WRONLY, MntID: 16, Ino: 7676}, nil},
		{"socket", FDInfo{Flags: unix.O_RDWR, MntID: 10, Ino: 7677}, nil},
		{"memfd", FDInfo{Flags: unix.O_CLOEXEC | oLargefile | unix.O_RDWR, Ino: 1028}, nil},
		{"signalfd", FDInfo{Flags: unix.O_NONBLOCK | unix.O_RDWR, MntID: 17, Ino: 24},
			map[string]string{"sigmask": "0000000000004200"}},
		{"pidfd", FDInfo{Flags: unix.O_CLOEXEC | unix.O_RDWR, MntID: 4, Ino: 4723},
			map[string]string{"Pid": "4722", "NSpid": "4722"}},
		{"timerfd", FDInfo{Flags: unix.O_CLOEXEC | unix.O_RDWR, MntID: 17, Ino: 24},
			map[string]string{"clockid": "1", "ticks": "0", "settime flags": "00",
				"it_value": "(99, 996698112)", "it_interval": "(1, 500000000)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fi := parseFDInfoFile(t, tt.name)
			extra, lines := fi.Extra, fi.Lines
			fi.Extra, fi.Lines = nil, nil
			if !reflect.DeepEqual(*fi, tt.want) {
				t.Errorf("got  %+v\nwant %+v", *fi, tt.want)
			}
			if !reflect.DeepEqual(extra, tt.extra) {
				t.Errorf("Extra %q, want %q", extra, tt.extra)
			}
			if len(lines) != len(tt.extra) {
				t.Errorf("Lines %q", lines)
			}
		})
	}
}

func TestFDInfoEpoll(t *testing.T) {
	fi := parseFDInfoFile(t, "epoll")
	if len(fi.Lines) != 3 || fi.Flags != unix.O_CLOEXEC|unix.O_RDWR {
		t.Fatalf("epoll fdinfo %+v", fi)
	}
	targets, err := fi.EpollTargets()
	if err != nil {
		t.Fatal(err)
	}
	want := []EpollTarget{
		{FD: 12, Events: unix.EPOLLOUT, Data: 0x112233440000000c, Ino: 0x1dfc, Sdev: 0xf},             // pipe
		{FD: 8, Events: unix.EPOLLIN | unix.EPOLLET, Data: 0x1122334455667788, Ino: 0x18, Sdev: 0x10}, // eventfd
		{FD: 13, Events: unix.EPOLLIN, Data: 0x112233440000000d, Ino: 0x18, Sdev: 0x10},               // timerfd
	}
	// The kernel adds EPOLLERR|EPOLLHUP to every registration.
	for i := range want {
		want[i].Events |= unix.EPOLLERR | unix.EPOLLHUP
	}
	if !reflect.DeepEqual(targets, want) {
		t.Errorf("got  %+v\nwant %+v", targets, want)
	}
	if _, err := fi.Timerfd(); !errors.Is(err, ErrNotThisKind) {
		t.Errorf("Timerfd of epoll: %v", err)
	}
}

func TestFDInfoTimerfd(t *testing.T) {
	tm, err := parseFDInfoFile(t, "timerfd").Timerfd()
	if err != nil {
		t.Fatal(err)
	}
	want := Timerfd{ClockID: unix.CLOCK_MONOTONIC, Value: Timespec{99, 996698112}, Interval: Timespec{1, 500000000}}
	if *tm != want {
		t.Errorf("got %+v, want %+v", *tm, want)
	}
	tm, err = parseFDInfoFile(t, "timerfd_abs").Timerfd()
	if err != nil {
		t.Fatal(err)
	}
	want = Timerfd{ClockID: unix.CLOCK_REALTIME, SettimeFlags: unix.TFD_TIMER_ABSTIME, Value: Timespec{204262896, 808736255}}
	if *tm != want {
		t.Errorf("got %+v, want %+v", *tm, want)
	}
}

func TestFDInfoInotify(t *testing.T) {
	w, err := parseFDInfoFile(t, "inotify").InotifyWatches()
	if err != nil {
		t.Fatal(err)
	}
	want := []InotifyWatch{
		{WD: 2, Ino: 0x3c4a3, Sdev: 0xfe00000, Mask: unix.IN_MODIFY, FHandleType: 1, FHandle: []byte{0xa3, 0xc4, 3, 0, 0, 0, 0, 0}},
		{WD: 1, Ino: 0x13, Sdev: 0xfe00000, Mask: unix.IN_CREATE | unix.IN_DELETE, FHandleType: 1, FHandle: []byte{0x13, 0, 0, 0, 0, 0, 0, 0}},
	}
	if !reflect.DeepEqual(w, want) {
		t.Errorf("got  %+v\nwant %+v", w, want)
	}
}

func TestFDInfoSignalfdPidfd(t *testing.T) {
	mask, err := parseFDInfoFile(t, "signalfd").SignalfdMask()
	if err != nil || mask != 1<<(unix.SIGUSR1-1)|1<<(unix.SIGTERM-1) {
		t.Errorf("SignalfdMask = %#x, %v", mask, err)
	}
	pid, err := parseFDInfoFile(t, "pidfd").PidfdPID()
	if err != nil || pid != 4722 {
		t.Errorf("PidfdPID = %d, %v", pid, err)
	}
	if _, err := parseFDInfoFile(t, "pipe_read").SignalfdMask(); !errors.Is(err, ErrNotThisKind) {
		t.Errorf("SignalfdMask of a pipe: %v", err)
	}
}

func TestParseFDInfoErrors(t *testing.T) {
	head := "pos:\t0\nflags:\t02\nmnt_id:\t1\nino:\t2\n"
	tests := []struct {
		name, text, field string
		line              int
	}{
		{"empty", "", "pos", 0},
		{"no ino", "pos:\t0\nflags:\t02\nmnt_id:\t1\n", "ino", 0},
		{"pos", "pos:\tx\n", "pos", 1},
		{"flags not octal", "pos:\t0\nflags:\t08\n", "flags", 2},
		{"no colon", head + "junk\n", "", 5},
		{"eventfd-count", head + "eventfd-count: 1g\n", "eventfd-count", 5},
		{"eventfd-semaphore", head + "eventfd-semaphore: yes\n", "eventfd-semaphore", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseFDInfo(strings.NewReader(tt.text))
			checkParseError(t, err, "fdinfo", tt.line, tt.field)
		})
	}

	accessors := []struct {
		name, lines, field string
		call               func(*FDInfo) error
	}{
		{"tfd missing data", "tfd:        8 events:       19 pos:0 ino:18 sdev:10", "data", epollErr},
		{"tfd bad events", "tfd:        8 events:       1z data: 1  pos:0 ino:18 sdev:10", "events", epollErr},
		{"tfd dangling key", "tfd:        8 events:", "tfd", epollErr},
		{"inotify bad wd", "inotify wd:x ino:1 sdev:1 mask:1 ignored_mask:0", "wd", inotifyErr},
		{"inotify odd handle", "inotify wd:1 ino:1 sdev:1 mask:1 ignored_mask:0 f_handle:abc", "f_handle", inotifyErr},
		{"timer value", "clockid: 1\nticks: 0\nsettime flags: 00\nit_value: (1 2)\nit_interval: (0, 0)", "it_value", timerErr},
		{"timer missing", "clockid: 1\nticks: 0\n", "settime flags", timerErr},
	}
	for _, tt := range accessors {
		t.Run(tt.name, func(t *testing.T) {
			fi, err := ParseFDInfo(strings.NewReader(head + tt.lines + "\n"))
			if err != nil {
				t.Fatal(err)
			}
			checkParseError(t, tt.call(fi), "fdinfo", 0, tt.field)
		})
	}
}

// oLargefile is O_LARGEFILE as the kernel shows it; x/sys/unix has 0 on amd64.
const oLargefile = 0o100000

func epollErr(fi *FDInfo) error   { _, err := fi.EpollTargets(); return err }
func inotifyErr(fi *FDInfo) error { _, err := fi.InotifyWatches(); return err }
func timerErr(fi *FDInfo) error   { _, err := fi.Timerfd(); return err }

func TestFileLocks(t *testing.T) {
	in := "pos:\t0\nflags:\t02\nmnt_id:\t20\nino:\t5\n" +
		"lock:\t1: POSIX  ADVISORY  WRITE 1234 00:1f:5 10 19\n" +
		"lock:\t2: OFDLCK ADVISORY  READ -1 00:1f:5 200 EOF\n" +
		"lock:\t3: FLOCK  ADVISORY  READ 1234 00:1f:5 0 EOF\n"
	fi, err := ParseFDInfo(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	got, err := fi.FileLocks()
	if err != nil {
		t.Fatal(err)
	}
	want := []FileLock{
		{Kind: "POSIX", Mode: "ADVISORY", Access: "WRITE", PID: 1234, Start: 10, End: 19},
		{Kind: "OFDLCK", Mode: "ADVISORY", Access: "READ", PID: -1, Start: 200, ToEOF: true},
		{Kind: "FLOCK", Mode: "ADVISORY", Access: "READ", PID: 1234, ToEOF: true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	for _, bad := range []string{"lock:\t1: POSIX ADVISORY WRITE x 00:1f:5 10 19\n", "lock:\t1: POSIX ADVISORY WRITE 1 00:1f:5 20 19\n", "lock:\t1: POSIX\n"} {
		fi, err := ParseFDInfo(strings.NewReader("pos:\t0\nflags:\t02\nmnt_id:\t20\nino:\t5\n" + bad))
		if err != nil {
			continue
		}
		if _, err := fi.FileLocks(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: %v, want a ParseError", bad, err)
		}
	}
}
