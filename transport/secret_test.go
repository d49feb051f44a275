package transport

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckSecret: low-entropy secrets are refused, random ones in every
// usual encoding accepted (many drawn, so a false refusal would show).
func TestCheckSecret(t *testing.T) {
	for name, s := range map[string]string{
		"one repeated byte": strings.Repeat("a", 64),
		"two bytes":         strings.Repeat("ab", 32),
		"a repeated string": strings.Repeat("0123456789abcdef", 4),
		"ascending":         "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
		"a word and digits": "passwordpassword1234567890123456",
		"32 hex digits":     "4f1c9a7e2b6d8035c1e9f4a27b3d6e08", // 128 bits, but no margin
		"short":             "x7#kQ9!mZ2",
	} {
		err := CheckSecret([]byte(s))
		if !errors.Is(err, ErrWeakSecret) || !errors.Is(err, ErrConfig) {
			t.Errorf("%s (%q): %v, want ErrWeakSecret", name, s, err)
		}
	}
	for i := range 2000 {
		var b [32]byte
		rand.Read(b[:])
		for enc, s := range map[string][]byte{
			"raw":    b[:],
			"hex":    []byte(hex.EncodeToString(b[:])),
			"base64": []byte(base64.StdEncoding.EncodeToString(b[:])),
		} {
			if err := CheckSecret(s); err != nil {
				t.Fatalf("random secret %d (%s) refused: %v", i, enc, err)
			}
		}
	}
}

// TestGenerateSecret: a new file of mode 0600 with a secret LoadSecret
// takes; never overwriting.
func TestGenerateSecret(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "secret")
	if err := GenerateSecret(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %#o, want 0600", fi.Mode().Perm())
	}
	s, err := LoadSecret(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 64 {
		t.Errorf("secret of %d bytes, want 64 hex digits", len(s))
	}
	before, _ := os.ReadFile(path)
	if err := GenerateSecret(path); !errors.Is(err, os.ErrExist) {
		t.Errorf("over an existing file: %v, want os.ErrExist", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Errorf("the existing secret was changed")
	}
	other := filepath.Join(dir, "other")
	GenerateSecret(other)
	if o, _ := LoadSecret(other); bytes.Equal(o, s) {
		t.Errorf("two secrets alike")
	}
}
