package proc

import (
	"encoding/binary"
	"testing"
)

func TestParseAuxvRecorded(t *testing.T) {
	data := readTestdata(t, "recorded/auxv")
	auxv, err := ParseAuxv(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(auxv) != len(data)/8 || auxv[len(auxv)-2] != AT_NULL {
		t.Fatalf("auxv has %d words, ends %v", len(auxv), auxv[len(auxv)-2:])
	}
	if v, ok := AuxvValue(auxv, AT_PAGESZ); !ok || v != 4096 {
		t.Errorf("AT_PAGESZ = %d, %v", v, ok)
	}
	if v, ok := AuxvValue(auxv, AT_SYSINFO_EHDR); !ok || v != 0x7fb59dacc000 {
		t.Errorf("AT_SYSINFO_EHDR = %#x, %v", v, ok)
	}
	if _, ok := AuxvValue(auxv, 1000); ok {
		t.Errorf("AuxvValue found an absent type")
	}
}

func TestParseAuxv(t *testing.T) {
	words := func(w ...uint64) []byte {
		b := make([]byte, 8*len(w))
		for i, v := range w {
			binary.LittleEndian.PutUint64(b[8*i:], v)
		}
		return b
	}
	// Anything after AT_NULL is dropped.
	auxv, err := ParseAuxv(words(AT_PAGESZ, 4096, AT_NULL, 0, 99, 99))
	if err != nil || len(auxv) != 4 || auxv[1] != 4096 {
		t.Errorf("got %v, %v", auxv, err)
	}
	for name, data := range map[string][]byte{
		"empty":      nil,
		"odd":        words(AT_PAGESZ, 4096, AT_NULL)[:20],
		"half pair":  words(AT_PAGESZ, 4096, AT_NULL),
		"no AT_NULL": words(AT_PAGESZ, 4096),
	} {
		_, err := ParseAuxv(data)
		checkParseError(t, err, "auxv", 0, "auxv")
		_ = name
	}
}
