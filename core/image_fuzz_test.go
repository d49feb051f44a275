package core

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"runtime"
	"testing"
)

func validImage() *Image {
	return &Image{
		Kind: ImageKind, Version: ImageVersion, Arch: runtime.GOARCH,
		Pages: PagesInfo{File: PagesFile, Codec: "s2", Rounds: 1},
		Process: Process{
			PID: 100, PPID: 1, PGID: 100, SID: 100, Comm: "x",
			Threads:    []Thread{{TID: 100}, {TID: 101}},
			Sigactions: make([]Sigaction, 64),
			VMAs: []VMA{
				{Start: 0x10000, End: 0x20000, Kind: VMAAnon, Pages: 3},
				{Start: 0x20000, End: 0x30000, Kind: VMAFile, File: &FileRef{Path: "/bin/true"}},
			},
			FDs: []FD{{FD: 0, Kind: FDPipe, Pipe: 7, Data: "files/pipe-1"}, {FD: 1, Kind: FDFile, File: &FileRef{Path: "/tmp/x"}}},
		},
		Tree: []Process{
			{PID: 102, PPID: 100, Threads: []Thread{{TID: 102}}, Pages: &PagesInfo{File: "pages-102.img"}},
			{PID: 103, PPID: 102, Zombie: &Zombie{ExitCode: 7 << 8}},
		},
		Blobs: map[string]Blob{"files/pipe-1": {Size: 3, SHA256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}},
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
		// Blobs: each one named is listed, with a sane size and hash.
		func(i *Image) { i.Blobs = nil },
		func(i *Image) { i.Process.FDs[0].Data = "files/pipe-2" },
		func(i *Image) { i.Blobs["files/pipe-1"] = Blob{Size: -1, SHA256: i.Blobs["files/pipe-1"].SHA256} },
		func(i *Image) { i.Blobs["files/pipe-1"] = Blob{Size: 3, SHA256: "xyz"} },
		func(i *Image) { i.Blobs["/etc/shadow"] = i.Blobs["files/pipe-1"] },
		func(i *Image) { i.Blobs["files/../x"] = i.Blobs["files/pipe-1"] },
	}
	for n, mutate := range bad {
		img := validImage()
		mutate(img)
		b, _ := json.Marshal(img)
		if _, err := DecodeImage(bytes.NewReader(b)); err == nil {
			t.Errorf("case %d: bad image accepted", n)
		}
	}
}

// FuzzDecodeImage: no input makes the decoder panic, and whatever it
// accepts passes validation again after a round trip.
func FuzzDecodeImage(f *testing.F) {
	good, _ := json.Marshal(validImage())
	f.Add(good)
	f.Add([]byte(`{"kind":"migrate-image","version":2}`))
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
