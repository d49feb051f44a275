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
