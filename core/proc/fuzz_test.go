package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// addSeeds adds every testdata file matching one of the globs to the corpus.
func addSeeds(f *testing.F, globs ...string) {
	f.Helper()
	n := 0
	for _, g := range globs {
		files, err := filepath.Glob(filepath.Join("testdata", g))
		if err != nil {
			f.Fatal(err)
		}
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
			n++
		}
	}
	if n == 0 {
		f.Fatalf("no seed files for %q", globs)
	}
}

// checkErr fails unless err is nil or a *ParseError with a file name.
func checkErr(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var pe *ParseError
	if !errors.As(err, &pe) || !errors.Is(err, ErrMalformed) || pe.File == "" || pe.Err == nil {
		t.Fatalf("error %v (%T) is not a proper *ParseError", err, err)
	}
	if len(pe.Value) > maxErrValue {
		t.Fatalf("error value of %d bytes", len(pe.Value))
	}
	_ = pe.Error()
}

// formatMapping writes m the way the kernel writes a maps line.
func formatMapping(m *Mapping) string {
	perms := []byte("---p")
	if m.Prot&1 != 0 {
		perms[0] = 'r'
	}
	if m.Prot&2 != 0 {
		perms[1] = 'w'
	}
	if m.Prot&4 != 0 {
		perms[2] = 'x'
	}
	if m.Shared {
		perms[3] = 's'
	}
	s := fmt.Sprintf("%08x-%08x %s %08x %02x:%02x %d ", m.Start, m.End, perms, m.Offset, m.Major, m.Minor, m.Inode)
	name := m.Path
	if m.Deleted {
		name += deletedSuffix
	}
	if name != "" {
		s = fmt.Sprintf("%-72s %s", s, name)
	}
	return s
}

func FuzzParseMaps(f *testing.F) {
	addSeeds(f, "recorded/maps", "hand/maps*")
	f.Fuzz(func(t *testing.T, data []byte) {
		maps, err := ParseMaps(bytes.NewReader(data))
		checkErr(t, err)
		if err != nil {
			return
		}
		// What parses formats back to text that parses to the same.
		var buf strings.Builder
		for i := range maps {
			m := &maps[i]
			if m.Start >= m.End || m.VmFlags != nil || m.Rss != 0 {
				t.Fatalf("bad mapping %+v", m)
			}
			if m.Path != "" && (m.Path[0] == ' ' || m.Path[0] == '\t' || strings.ContainsRune(m.Path, '\n')) {
				t.Fatalf("path %q", m.Path)
			}
			buf.WriteString(formatMapping(m))
			buf.WriteByte('\n')
		}
		again, err := ParseMaps(strings.NewReader(buf.String()))
		if err != nil {
			t.Fatalf("reparse: %v\n%s", err, buf.String())
		}
		if len(maps) == 0 {
			maps = nil
			if len(again) == 0 {
				again = nil
			}
		}
		if !reflect.DeepEqual(maps, again) {
			t.Fatalf("round trip differs:\n%+v\n%+v", maps, again)
		}
	})
}

func FuzzParseSmaps(f *testing.F) {
	addSeeds(f, "recorded/smaps", "hand/smaps*")
	f.Fuzz(func(t *testing.T, data []byte) {
		maps, err := ParseSmaps(bytes.NewReader(data))
		checkErr(t, err)
		for i := range maps {
			for _, fl := range maps[i].VmFlags {
				if fl == "" || strings.ContainsAny(fl, " \t\n") {
					t.Fatalf("flag %q", fl)
				}
			}
			if maps[i].Rss%1024 != 0 {
				t.Fatalf("Rss %d not whole kB", maps[i].Rss)
			}
		}
	})
}

func FuzzParseStat(f *testing.F) {
	addSeeds(f, "recorded/*stat", "hand/stat*")
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := ParseStat(data)
		checkErr(t, err)
		if err == nil && strings.Count(string(data), "(") == 0 {
			t.Fatalf("parsed without '(': %+v", st)
		}
	})
}

func FuzzParseStatus(f *testing.F) {
	addSeeds(f, "recorded/*status", "hand/status*")
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := ParseStatus(bytes.NewReader(data))
		checkErr(t, err)
	})
}

func FuzzParseFDInfo(f *testing.F) {
	addSeeds(f, "recorded/fdinfo_*")
	f.Fuzz(func(t *testing.T, data []byte) {
		fi, err := ParseFDInfo(bytes.NewReader(data))
		checkErr(t, err)
		if err != nil {
			return
		}
		_, err = fi.EpollTargets()
		checkErr(t, err)
		_, err = fi.InotifyWatches()
		checkErr(t, err)
		if _, err = fi.Timerfd(); err != ErrNotThisKind {
			checkErr(t, err)
		}
		if _, err = fi.SignalfdMask(); err != ErrNotThisKind {
			checkErr(t, err)
		}
		if _, err = fi.PidfdPID(); err != ErrNotThisKind {
			checkErr(t, err)
		}
	})
}

func FuzzParseAuxv(f *testing.F) {
	addSeeds(f, "recorded/auxv")
	f.Fuzz(func(t *testing.T, data []byte) {
		auxv, err := ParseAuxv(data)
		checkErr(t, err)
		if err == nil && (len(auxv)%2 != 0 || auxv[len(auxv)-2] != AT_NULL || len(auxv)*8 > len(data)) {
			t.Fatalf("bad auxv %v from %d bytes", auxv, len(data))
		}
	})
}

func FuzzSplitNUL(f *testing.F) {
	addSeeds(f, "recorded/cmdline")
	f.Fuzz(func(t *testing.T, data []byte) {
		args := SplitNUL(data)
		joined := strings.Join(args, "\x00")
		if len(data) > 0 && data[len(data)-1] == 0 {
			joined += "\x00"
		}
		if joined != string(data) {
			t.Fatalf("%q split to %q", data, args)
		}
	})
}

// FuzzParseUint compares the number parsers with strconv.
func FuzzParseUint(f *testing.F) {
	for _, s := range []string{"0", "12", "ff", "FF", "777", "18446744073709551615", "18446744073709551616", "ffffffffffffffff", "1ffffffffffffffff", "", "-1", "+1", "0x1", "1_0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, base := range []uint64{8, 10, 16} {
			got, err := parseUint([]byte(s), base)
			want, werr := strconv.ParseUint(s, int(base), 64)
			if (err == nil) != (werr == nil) || (err == nil && got != want) {
				t.Fatalf("parseUint(%q, %d) = %d, %v; strconv %d, %v", s, base, got, err, want, werr)
			}
		}
		if strings.HasPrefix(s, "+") {
			return // strconv.ParseInt takes a '+'; the kernel never prints one
		}
		got, err := parseInt([]byte(s), 32)
		want, werr := strconv.ParseInt(s, 10, 32)
		if (err == nil) != (werr == nil) || (err == nil && got != want) {
			t.Fatalf("parseInt(%q) = %d, %v; strconv %d, %v", s, got, err, want, werr)
		}
	})
}
