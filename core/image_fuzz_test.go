package core

import (
	"bytes"
	"encoding/json"
	"errors"
	"runtime"
	"testing"
)

func validImage() *Image {
	return &Image{
		Kind: ImageKind, Version: ImageVersion, Arch: runtime.GOARCH,
		Pages: PagesInfo{File: PagesFile, Codec: "s2", Rounds: 1},
		Process: Process{
			PID: 100, PPID: 1, PGID: 100, SID: 100, Comm: "x",
			Exe: FileRef{Path: "/bin/x"}, Cwd: "/tmp", Root: "/",
			Threads:    []Thread{{TID: 100}, {TID: 101}},
			Sigactions: make([]Sigaction, 64),
			VMAs: []VMA{
				{Start: 0x10000, End: 0x20000, Kind: VMAAnon, Pages: 3},
				{Start: 0x20000, End: 0x30000, Kind: VMAFile, File: &FileRef{Path: "/bin/true"}},
			},
			FDs: []FD{{FD: 0, Kind: FDPipe, Pipe: 7, Data: "files/pipe-1"}, {FD: 1, Kind: FDFile, File: &FileRef{Path: "/tmp/x"}}},
		},
		Tree: []Process{
			{PID: 102, PPID: 100, Exe: FileRef{Path: "/bin/x"}, Cwd: "/", Root: "/", Threads: []Thread{{TID: 102}}, Pages: &PagesInfo{File: "pages-102.img"}},
			{PID: 103, PPID: 102, Zombie: &Zombie{ExitCode: 7 << 8}},
		},
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
		func(i *Image) { i.Pages.File = "/etc/shadow" },
		func(i *Image) { i.Tree[0].PPID = 999 },
		func(i *Image) { i.Tree[0].Pages.File = "../pages.img" },
		func(i *Image) { i.Tree[1].Threads = []Thread{{TID: 103}} },
		func(i *Image) { i.Tree = append(i.Tree, i.Tree[0]) },
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
		FD{FD: 2, Kind: FDMemfd, File: &FileRef{Path: "/memfd:a/b (deleted)", Deleted: true}},
		FD{FD: 3, Kind: FDSocket, Socket: &Socket{Family: 1, Name: []byte("\x00abstract"), PeerName: []byte("/dev/log")}},
		FD{FD: 4, Kind: FDSocket, Socket: &Socket{Family: 1, Name: []byte("/run/s"), File: &SockFile{Path: "/run/s"}}})
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
	f.Add([]byte(`{"kind":"migrate-image","version":1}`))
	f.Add([]byte(`[]`))
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
