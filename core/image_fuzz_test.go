package core

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"runtime"
	"testing"
)

func validImage() *Image {
	return &Image{
		Kind: ImageKind, Version: ImageVersion, Arch: runtime.GOARCH,
		Pages: PagesInfo{File: PagesFile, Codec: "s2", Rounds: 1},
		Process: Process{
			PID: 100, PPID: 1, PGID: 100, SID: 100, Comm: "x",
			Exe: FileRef{Path: "/bin/x"}, Cwd: "/", Root: "/",
			Threads:    []Thread{{TID: 100}, {TID: 101}},
			Sigactions: make([]Sigaction, 64),
			VMAs: []VMA{
				{Start: 0x10000, End: 0x20000, Flags: 2, Kind: VMAAnon, Pages: 3},
				{Start: 0x20000, End: 0x30000, Flags: 2, Kind: VMAFile, File: &FileRef{Path: "/bin/true"}},
			},
			FDs: []FD{{FD: 0, Kind: FDPipe, Pipe: 7, Data: "files/pipe-1", Packets: []int{1, 2}, Owner: &FDOwner{Type: 1, PID: 100}, Signal: 29}, {FD: 1, Kind: FDFile, File: &FileRef{Path: "/tmp/x"}},
				{FD: 2, Kind: FDSocket, Socket: &Socket{Family: afNetlink, Type: 3, Protocol: 16, State: SockBound, Netlink: &NetlinkState{PortID: 100, Groups: []uint32{1, 33}}}},
				{FD: 3, Kind: FDExternal, External: "pipe:[9]"}},
		},
		Tree: []Process{
			{PID: 102, PPID: 100, Threads: []Thread{{TID: 102}}, Pages: &PagesInfo{File: "pages-102.img"},
				Exe: FileRef{Path: "/bin/x"}, Cwd: "/", Root: "/"},
			{PID: 103, PPID: 102, Zombie: &Zombie{ExitCode: 7 << 8}},
		},
		Blobs:  map[string]Blob{"files/pipe-1": {Size: 3, SHA256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}},
		Clocks: &Clocks{BootID: "b", Realtime: 1, Monotonic: 5, Boottime: 6, Offsets: TimeOffsets{Monotonic: -5, Boottime: 1000}},
		CPU:    &CPUFeatures{XCR0: 0xe7, InUse: 0xa2},
	}
}

func TestDecodeImage(t *testing.T) {
	good, err := json.Marshal(validImage())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeImage(bytes.NewReader(good)); err != nil {
		t.Fatalf("valid image refused: %v", err)
	}
	bad := []func(*Image){
		func(i *Image) { i.Kind = "other" },
		func(i *Image) { i.Version = 99 },
		func(i *Image) { i.Arch = "riscv64" },
		func(i *Image) { i.Process.Threads = nil },
		func(i *Image) { i.Process.Threads[0].TID = 5 },
		func(i *Image) { i.Process.VMAs[1].Start = 0x18000 },
		func(i *Image) { i.Process.VMAs[0].Pages = 1000 },
		func(i *Image) { i.Process.VMAs[1].File = nil },
		func(i *Image) { i.Process.FDs[0].Data = "../../etc/passwd" },
		func(i *Image) { i.Process.FDs[1].FD = 0 },
		func(i *Image) { i.Process.FDs[2].Socket.Protocol = 12 },                    // NETLINK_NETFILTER
		func(i *Image) { i.Process.FDs[2].Socket.Netlink.Groups = []uint32{33, 1} }, // out of order
		func(i *Image) { i.Process.FDs[2].Socket.Netlink.Groups = []uint32{0} },     // no group 0
		func(i *Image) { i.Process.FDs[2].Socket.Netlink.DstGroup = 33 },            // connect takes 1..32
		func(i *Image) { i.Process.FDs[2].Socket.Family = afInet },                  // netlink state on another family
		func(i *Image) { i.Process.FDs[2].Socket.Netlink = nil },                    // a netlink socket without it
		func(i *Image) { i.Process.FDs[3].External = "/etc/passwd" },                // not an object
		func(i *Image) { i.Process.FDs[3].External = "pipe:[9" },                    // not one
		func(i *Image) { i.Process.FDs[3].Kind = FDPipe },                           // external on a pipe
		func(i *Image) { i.Process.FDs[3].External = "" },                           // an external fd without it
		func(i *Image) { i.Pages.File = "/etc/shadow" },
		func(i *Image) { i.Tree[0].PPID = 999 },
		func(i *Image) { i.Tree[0].Pages.File = "../pages.img" },
		func(i *Image) { i.Tree[1].Threads = []Thread{{TID: 103}} },
		func(i *Image) { i.Tree = append(i.Tree, i.Tree[0]) },
		// Blobs: each one named is listed, with a sane size and hash.
		func(i *Image) { i.Blobs = nil },
		func(i *Image) { i.Process.FDs[0].Data = "files/pipe-2" },
		func(i *Image) { i.Blobs["files/pipe-1"] = Blob{Size: -1, SHA256: i.Blobs["files/pipe-1"].SHA256} },
		func(i *Image) { i.Blobs["files/pipe-1"] = Blob{Size: 3, SHA256: "xyz"} },
		func(i *Image) { i.Blobs["/etc/shadow"] = i.Blobs["files/pipe-1"] },
		func(i *Image) { i.Blobs["files/../x"] = i.Blobs["files/pipe-1"] },
		// Values the restore hands to the kernel, each out of range.
		func(i *Image) { i.Clocks = &Clocks{Monotonic: -1} },
		func(i *Image) { i.Clocks = &Clocks{Monotonic: 5, Offsets: TimeOffsets{Monotonic: -6}} },
		func(i *Image) { i.Clocks = &Clocks{Boottime: MaxClockNS + 1} },
		func(i *Image) { i.Clocks = &Clocks{Realtime: -MaxClockNS - 1} },
		func(i *Image) { i.Clocks = &Clocks{Offsets: TimeOffsets{Boottime: MaxClockNS}, Boottime: 1} },
		func(i *Image) { i.Process.FDs[1].FD = MaxFD },
		func(i *Image) { i.Process.FDs[1].Pos = -1 },
		func(i *Image) { i.Process.Rlimits = []Rlimit{{Resource: 7, Cur: 10, Max: 5}} },
		func(i *Image) { i.Process.Rlimits = []Rlimit{{Resource: 16}} },
		func(i *Image) { i.Process.Rlimits = []Rlimit{{Resource: 7}, {Resource: 7}} },
		func(i *Image) { i.Process.Itimers = []Itimer{{Which: 3}} },
		func(i *Image) { i.Process.Itimers = []Itimer{{Which: 0, IntervalUS: -1}} },
		func(i *Image) { i.Process.PosixTimers = []PosixTimer{{ID: 1, Notify: 4, Signo: 14, TID: 999}} },
		func(i *Image) { i.Process.PosixTimers = []PosixTimer{{ID: 1, Notify: 0, Signo: 65}} },
		func(i *Image) { i.Process.MM = MM{StartCode: 0x2000, EndCode: 0x1000} },
		func(i *Image) { i.Process.MM = MM{StartCode: 0x1000, EndCode: 0x2000, Auxv: []uint64{6, 4096, 0}} },
		func(i *Image) {
			i.Process.MM = MM{StartCode: 0x1000, EndCode: 0x2000, Auxv: make([]uint64, MaxAuxvWords+2)}
		},
		func(i *Image) { i.Process.MM = MM{StartCode: 0x1000, EndCode: 0x2000, Auxv: []uint64{6, 4096}} },
		func(i *Image) { i.Process.Creds.Groups = make([]uint32, MaxGroups+1) },
		func(i *Image) { i.Process.Creds.UID[1] = ^uint32(0) },
		func(i *Image) { i.Process.Personality = 0xffffffff },
		func(i *Image) { i.Process.Umask = 0o1000 },
		func(i *Image) { i.Process.Cwd = "relative" },
		func(i *Image) { i.Process.Exe.Path = "" },
		func(i *Image) { i.Process.VMAs[0].Prot = 8 },
		func(i *Image) { i.Process.VMAs[0].Flags = 3 },
		func(i *Image) { i.Process.VMAs[0].Madvise = []int{4} }, // MADV_DONTNEED
		func(i *Image) { i.Process.VMAs[1].File.Path = "bin/true" },
		func(i *Image) {
			i.Process.FDs = append(i.Process.FDs, FD{FD: 5, Kind: FDInotify, Inotify: []InotifyWatch{{WD: 1 << 30, Path: "/"}}})
		},
		func(i *Image) {
			i.Process.FDs = append(i.Process.FDs, FD{FD: 5, Kind: FDInotify, Inotify: []InotifyWatch{{WD: 1, Path: "/"}, {WD: 1, Path: "/"}}})
		},
		func(i *Image) { i.Process.FDs = append(i.Process.FDs, FD{FD: 5, Kind: FDEventfd, Count: ^uint64(0)}) },
		// Packets, owners and the extents of a sparse file.
		func(i *Image) { i.Process.FDs[0].Packets = []int{0, 3} },
		func(i *Image) { i.Process.FDs[0].Packets = []int{1 << 20} },
		func(i *Image) { i.Process.FDs[1].Packets = []int{3} }, // no data
		func(i *Image) { i.Process.FDs[1].Owner = &FDOwner{Type: 3, PID: 100} },
		func(i *Image) { i.Process.FDs[1].Owner = &FDOwner{Type: 1, PID: -100} },
		func(i *Image) { i.Process.FDs[1].Signal = 65 },
		func(i *Image) {
			i.Process.FDs[1].File = &FileRef{Path: "/tmp/x", Size: 100, Deleted: true, Blob: "files/pipe-1", Extents: []Extent{{Off: 90, Len: 20}}}
		},
		func(i *Image) {
			i.Process.FDs[1].File = &FileRef{Path: "/tmp/x", Size: 100, Deleted: true, Blob: "files/pipe-1", Extents: []Extent{{Off: 50, Len: 1}, {Off: 10, Len: 1}}}
		},
		func(i *Image) {
			i.Process.FDs[1].File = &FileRef{Path: "/tmp/x", Size: 100, Extents: []Extent{{Off: 0, Len: 3}}} // no blob
		},
		func(i *Image) { i.Process.FDs = append(i.Process.FDs, FD{FD: 5, Kind: "device"}) },
		func(i *Image) { i.Process.Threads[1].Pending = []Siginfo{{Signo: 10, Raw: make([]byte, 12)}} },
		func(i *Image) { i.Process.Threads[1].Restart = "maybe" },
		func(i *Image) { i.Process.Threads[1].Regs = Regs{CS: 0x10, SS: 0x2b, RIP: 0x1000} },
		func(i *Image) { i.Process.Threads[1].Regs = Regs{CS: 0x33, SS: 0x2b, FS: 0x10} },
		func(i *Image) { i.Process.Threads[1].Regs = Regs{CS: 0x33, SS: 0x2b, FSBase: 1 << 63} },
		func(i *Image) { i.Process.Threads[1].Xstate = make([]byte, 100) },
		func(i *Image) { i.Process.Threads[1].RobustList, i.Process.Threads[1].RobustLen = 0x1000, 8 },
		func(i *Image) { i.Process.Threads[1].AltStack = AltStack{SP: 0x1000, Size: 100} },
		func(i *Image) { i.Process.PosixTimers = []PosixTimer{{ID: 1, Notify: 1, Clock: 4}} },
		func(i *Image) { i.Tree[1].Zombie.ExitCode = 19 },      // SIGSTOP stops, does not end
		func(i *Image) { i.Tree[1].Zombie.ExitCode = 0x7f },    // "stopped", not a death
		func(i *Image) { i.Tree[1].Zombie.ExitCode = 1 << 16 }, // no such status
		func(i *Image) {
			i.Process.FDs = append(i.Process.FDs, FD{FD: 5, Kind: FDTimerfd, Timerfd: &Timerfd{Clock: 4}})
		},
		func(i *Image) { i.Tree[0].Threads[0].TID = 102; i.Tree[0].PID = 102; i.Process.Threads[1].TID = 102 },
		func(i *Image) { i.Tree[1].PID = 101 }, // a zombie with a thread's TID
	}
	for n, mutate := range bad {
		img := validImage()
		mutate(img)
		b, _ := json.Marshal(img)
		if _, err := DecodeImage(bytes.NewReader(b)); err == nil {
			t.Errorf("case %d: bad image accepted", n)
		}
	}
	// Every path the restore opens is absolute and clean.
	badPaths := []func(*Image){
		func(i *Image) { i.Process.Exe.Path = "bin/x" },
		func(i *Image) { i.Process.Cwd = "" },
		func(i *Image) { i.Process.Cwd = "/tmp/../etc" },
		func(i *Image) { i.Process.Root = "." },
		func(i *Image) { i.Process.VMAs[1].File.Path = "../../etc/shadow" },
		func(i *Image) { i.Process.FDs[1].File.Path = "../../etc/shadow" },
		func(i *Image) { i.Process.FDs[1].File.Path = "/tmp//x" },
		func(i *Image) { i.Process.FDs[1].File.Path = "/tmp/x\x00y" },
		func(i *Image) {
			i.Process.FDs[1] = FD{FD: 1, Kind: FDInotify, Inotify: []InotifyWatch{{WD: 1, Path: "etc"}}}
		},
		func(i *Image) {
			i.Process.FDs[1] = FD{FD: 1, Kind: FDSocket, Socket: &Socket{Family: 1, Name: []byte("sock"), File: &SockFile{Path: "sock"}}}
		},
		func(i *Image) {
			i.Process.FDs[1] = FD{FD: 1, Kind: FDSocket, Socket: &Socket{Family: 1, Name: []byte("run/s")}}
		},
		func(i *Image) {
			i.Process.FDs[1] = FD{FD: 1, Kind: FDSocket, Socket: &Socket{Family: 1, PeerName: []byte("../dev/log")}}
		},
		func(i *Image) { i.Tree[0].Cwd = "relative" },
	}
	for n, mutate := range badPaths {
		img := validImage()
		mutate(img)
		b, _ := json.Marshal(img)
		if _, err := DecodeImage(bytes.NewReader(b)); !errors.Is(err, ErrBadPath) {
			t.Errorf("path case %d: %v, want ErrBadPath", n, err)
		}
	}
	// Memfds, abstract and absolute socket names pass.
	img := validImage()
	img.Process.FDs = append(img.Process.FDs,
		FD{FD: 12, Kind: FDMemfd, File: &FileRef{Path: "/memfd:a/b (deleted)", Deleted: true}},
		FD{FD: 13, Kind: FDSocket, Socket: &Socket{Family: 1, Name: []byte("\x00abstract"), PeerName: []byte("/dev/log")}},
		FD{FD: 14, Kind: FDSocket, Socket: &Socket{Family: 1, Name: []byte("/run/s"), File: &SockFile{Path: "/run/s"}}})
	b, _ := json.Marshal(img)
	if _, err := DecodeImage(bytes.NewReader(b)); err != nil {
		t.Errorf("good paths refused: %v", err)
	}
}

// FuzzDecodeImage: no input makes the decoder panic, and whatever it
// accepts passes validation again after a round trip.
func FuzzDecodeImage(f *testing.F) {
	good, _ := json.Marshal(validImage())
	f.Add(good)
	withSeccomp, _ := json.Marshal(seccompImage())
	f.Add(withSeccomp)
	container := validImage()
	withNS(container)
	withNamespaces, _ := json.Marshal(container)
	f.Add(withNamespaces)
	withMounts := validImage()
	withMounts.Mounts = &MountNS{Mounts: []Mount{{Kind: MountHost, ID: 1, Point: "/", Root: "/"},
		{Kind: MountTmpfs, ID: 2, Point: "/t", Root: "/", FSType: "tmpfs", Files: []TmpfsFile{{Path: "d", Mode: sIFDIR | 0o755}, {Path: "d/l", Mode: sIFLNK | 0o777, Link: "x"}}}}}
	mounts, _ := json.Marshal(withMounts)
	f.Add(mounts)
	// A runc container's: pivoted, own binds, a /dev with a device, a
	// cgroup namespace (withNS).
	runc := validImage()
	withNS(runc)
	runc.Mounts = &MountNS{Pivoted: true, Mounts: []Mount{{Kind: MountBind, ID: 1, Point: "/", Root: "/b/rootfs", From: "/b/rootfs"},
		{Kind: MountFresh, ID: 2, Parent: 1, Point: "/proc", Root: "/", FSType: "proc", Dev: "0:60", Container: true},
		{Kind: MountTmpfs, ID: 3, Parent: 1, Point: "/dev", Root: "/", FSType: "tmpfs", Dev: "0:61", Files: []TmpfsFile{{Path: "null", Mode: sIFCHR | 0o666, Rdev: 1<<8 | 3}}},
		{Kind: MountOwnBind, ID: 4, Parent: 2, Point: "/proc/keys", Root: "/null", FSType: "tmpfs", Dev: "0:61", Of: 3, Container: true}}}
	pivoted, _ := json.Marshal(runc)
	if _, err := DecodeImage(bytes.NewReader(pivoted)); err != nil {
		f.Fatalf("a runc container's image refused: %v", err)
	}
	f.Add(pivoted)
	// A rootless container's: its user namespace.
	rootless := validImage()
	withNS(rootless)
	rootless.Namespaces.User = &UserNamespace{UIDMap: []IDMap{{0, 100000, 65536}}, GIDMap: []IDMap{{0, 100000, 65536}, {65536, 5, 1}}, SetGroups: "allow"}
	userNS, _ := json.Marshal(rootless)
	if _, err := DecodeImage(bytes.NewReader(userNS)); err != nil {
		f.Fatalf("a rootless container's image refused: %v", err)
	}
	f.Add(userNS)
	f.Add([]byte(`{"kind":"migrate-image","version":2}`))
	f.Add([]byte(`[]`))
	// A real image (the target's seed).
	if real, err := os.ReadFile("../target/testdata/image-sleep/image.json"); err == nil {
		f.Add(real)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := DecodeImage(bytes.NewReader(data))
		if err != nil {
			return
		}
		again, err := json.Marshal(img)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeImage(bytes.NewReader(again)); err != nil {
			t.Fatalf("accepted image fails after a round trip: %v", err)
		}
	})
}

// TestDecodeImageStrict: a key this build does not know, or data after the
// object, is refused rather than ignored; an older version is refused as
// such.
func TestDecodeImageStrict(t *testing.T) {
	good, err := json.Marshal(validImage())
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"unknown top-level key": append([]byte(`{"extra":1,`), good[1:]...),
		"unknown nested key":    bytes.Replace(good, []byte(`"comm":"x"`), []byte(`"comm":"x","command":"y"`), 1),
		"trailing object":       append(append([]byte{}, good...), []byte(`{}`)...),
		"trailing garbage":      append(append([]byte{}, good...), []byte(` x`)...),
	}
	for name, b := range cases {
		if _, err := DecodeImage(bytes.NewReader(b)); !errors.Is(err, ErrNotImage) {
			t.Errorf("%s: error %v, want ErrNotImage", name, err)
		}
	}
	if _, err := DecodeImage(bytes.NewReader(append(append([]byte{}, good...), '\n', ' '))); err != nil {
		t.Errorf("trailing white space refused: %v", err)
	}
	old := bytes.Replace(good, []byte(`"version":2`), []byte(`"version":1`), 1)
	if _, err := DecodeImage(bytes.NewReader(old)); !errors.Is(err, ErrBadVersion) {
		t.Errorf("version 1 image: error %v, want ErrBadVersion", err)
	}
}

// TestBlobReader: the reader yields the blob and ends in io.EOF only if it
// has the recorded size and hash.
func TestBlobReader(t *testing.T) {
	data := []byte("some pipe contents")
	b, err := HashBlob(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(b.Reader(bytes.NewReader(data))); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("intact blob: %q, %v", got, err)
	}
	flipped := bytes.Clone(data)
	flipped[3] ^= 1
	for name, d := range map[string][]byte{
		"truncated": data[:len(data)-1],
		"longer":    append(bytes.Clone(data), 'x'),
		"flipped":   flipped,
		"empty":     nil,
	} {
		if _, err := io.ReadAll(b.Reader(bytes.NewReader(d))); !errors.Is(err, ErrBlobMismatch) {
			t.Errorf("%s: error %v, want ErrBlobMismatch", name, err)
		}
	}
}
