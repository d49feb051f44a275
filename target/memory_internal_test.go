package target

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
	"github.com/procmig/migrate/pagestream"
)

// TestWriteFramePacked: frames read packed (the stored pages one after the
// other) or whole are written to their places in one call each, zero pages
// as zeros over old contents, or left alone where skip says so.
func TestWriteFramePacked(t *testing.T) {
	const pages = 2*pagestream.MaxFramePages + 37
	mem, err := unix.Mmap(-1, 0, pages*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	base := raw.AddrOf(mem)
	// Runs of zero pages of every length up to 4 between data pages.
	want := make([]byte, pages*pageSize)
	for i := range pages {
		if i%7 < 3 || i%11 == 0 {
			continue // zero
		}
		p := want[i*pageSize : (i+1)*pageSize]
		for k := range p {
			p[k] = byte(i + k*3)
		}
	}
	var stream bytes.Buffer
	w, err := pagestream.NewWriter(&stream, pagestream.WriterOptions{Codec: pagestream.CodecS2, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WritePages(0, base, bytes.Clone(want)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name        string
		packed      bool
		skipZero    bool
		fill        byte
		wantSkipped byte
	}{
		{"packed over old contents", true, false, 0xee, 0},
		{"whole over old contents", false, false, 0xee, 0},
		{"packed, zero pages left alone", true, true, 0xee, 0xee},
	} {
		t.Run(c.name, func(t *testing.T) {
			for i := range mem {
				mem[i] = c.fill
			}
			rd, err := pagestream.NewReader(bytes.NewReader(stream.Bytes()), pagestream.ReaderOptions{Packed: c.packed})
			if err != nil {
				t.Fatal(err)
			}
			defer rd.Close()
			for {
				fr, err := rd.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if fr.Kind != pagestream.FramePages {
					continue
				}
				if c.packed && len(fr.Data) != fr.Stored*pageSize {
					t.Fatalf("packed frame of %d stored pages holds %d bytes", fr.Stored, len(fr.Data))
				}
				skip := make([]bool, fr.Pages)
				for i := range skip {
					skip[i] = c.skipZero && fr.IsZero(i)
				}
				if err := writeFrame(os.Getpid(), fr, skip); err != nil {
					t.Fatal(err)
				}
			}
			for i := range pages {
				got, exp := mem[i*pageSize:(i+1)*pageSize], want[i*pageSize:(i+1)*pageSize]
				zero := !bytes.ContainsFunc(exp, func(r rune) bool { return r != 0 })
				if zero && c.skipZero {
					exp = bytes.Repeat([]byte{c.wantSkipped}, pageSize)
				}
				if !bytes.Equal(got, exp) {
					t.Fatalf("page %d differs", i)
				}
			}
		})
	}
	// A frame that lands outside writable memory fails, naming EFAULT.
	rd, err := pagestream.NewReader(bytes.NewReader(stream.Bytes()), pagestream.ReaderOptions{Packed: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	fr, err := rd.Next()
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mprotect(mem, unix.PROT_READ); err != nil {
		t.Fatal(err)
	}
	if err := writeFrame(os.Getpid(), fr, make([]bool, fr.Pages)); !errors.Is(err, unix.EFAULT) {
		t.Errorf("write into read-only memory: %v, want EFAULT", err)
	}
}

// BenchmarkApplyFrames is the apply stage of a restore: 64 MiB of
// heap-like frames (zero pages among them) decoded and written into fresh
// memory of a process (this one), read whole (every page moved to its
// place, the zero ones cleared, then written) or packed (written from
// where they were decompressed, zero pages left alone), one
// process_vm_writev a frame.
func BenchmarkApplyFrames(b *testing.B) {
	const pages = 64 << 20 / pageSize
	src := make([]byte, pages*pageSize)
	for i := range pages {
		if i%10 < 3 {
			continue // zero, as bench_heap's
		}
		p := src[i*pageSize : (i+1)*pageSize]
		for k := range p {
			p[k] = "the quick brown fox jumps over the lazy dog "[(k+i)%44] ^ byte(i%10/7*k)
		}
	}
	var stream bytes.Buffer
	w, err := pagestream.NewWriter(&stream, pagestream.WriterOptions{Codec: pagestream.CodecS2})
	if err != nil {
		b.Fatal(err)
	}
	const base = 0x7e0000000000
	for off := 0; off < len(src); off += 1 << 20 {
		if err := w.WritePages(0, base+uint64(off), bytes.Clone(src[off:off+1<<20])); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	for _, packed := range []bool{false, true} {
		b.Run(map[bool]string{false: "whole", true: "packed"}[packed], func(b *testing.B) {
			b.SetBytes(int64(len(src)))
			for b.Loop() {
				b.StopTimer()
				mem, err := unix.Mmap(-1, 0, len(src), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
				if err != nil {
					b.Fatal(err)
				}
				delta := raw.AddrOf(mem) - base
				b.StartTimer()
				rd, err := pagestream.NewReader(bytes.NewReader(stream.Bytes()), pagestream.ReaderOptions{Packed: packed})
				if err != nil {
					b.Fatal(err)
				}
				for {
					fr, err := rd.Next()
					if errors.Is(err, io.EOF) {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					if fr.Kind != pagestream.FramePages {
						continue
					}
					fr.Addr += delta
					skip := make([]bool, fr.Pages)
					for i := range skip {
						skip[i] = fr.IsZero(i)
					}
					if err := writeFrame(os.Getpid(), fr, skip); err != nil {
						b.Fatal(err)
					}
				}
				rd.Close()
				b.StopTimer()
				unix.Munmap(mem)
				b.StartTimer()
			}
		})
	}
}
