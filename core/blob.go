package core

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
)

// MaxBlobSize caps one file of an image (the contents of a deleted file or
// memfd are the largest).
const MaxBlobSize = 1 << 40

// ErrBlobMismatch is returned when a blob's contents differ from the size
// or hash the image records for it (truncated, extended or changed).
var ErrBlobMismatch = errors.New("file of the image differs from its recorded size or SHA-256")

// validBlobInfo checks the recorded size and hash of a blob.
func validBlobInfo(b Blob) error {
	if b.Size < 0 || b.Size > MaxBlobSize {
		return fmt.Errorf("size %d out of range", b.Size)
	}
	if len(b.SHA256) != 2*sha256.Size {
		return fmt.Errorf("sha256 %q is not %d hex digits", b.SHA256, 2*sha256.Size)
	}
	if _, err := hex.DecodeString(b.SHA256); err != nil {
		return fmt.Errorf("sha256 %q: %w", b.SHA256, err)
	}
	return nil
}

// BlobNames returns the blobs p names (FD data, file contents, socket
// queues, mapped deleted files), in order, with repeats.
func (p *Process) BlobNames() []string {
	var out []string
	add := func(s string) {
		if s != "" {
			out = append(out, s)
		}
	}
	for _, f := range p.FDs {
		add(f.Data)
		add(blobOf(f.File))
		if f.Socket != nil {
			add(f.Socket.Queue)
			if t := f.Socket.TCP; t != nil {
				add(t.SendQueue)
				add(t.RecvQueue)
			}
		}
	}
	for _, v := range p.VMAs {
		add(blobOf(v.File))
	}
	return out
}

// HashBlob returns the Blob describing the contents r yields.
func HashBlob(r io.Reader) (Blob, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return Blob{}, err
	}
	return Blob{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// Reader returns a reader of r that yields at most b.Size bytes and fails
// with ErrBlobMismatch where r is shorter or longer than b.Size or its
// contents do not hash to b.SHA256: the mismatch comes in place of io.EOF,
// so a caller that reads to the end has checked the whole blob.
func (b Blob) Reader(r io.Reader) io.Reader {
	return &blobReader{r: io.LimitReader(r, b.Size+1), want: b, h: sha256.New()}
}

type blobReader struct {
	r    io.Reader
	want Blob
	h    hash.Hash
	n    int64
	err  error
}

func (br *blobReader) Read(p []byte) (int, error) {
	if br.err != nil {
		return 0, br.err
	}
	n, err := br.r.Read(p)
	br.n += int64(n)
	if br.n > br.want.Size {
		br.err = fmt.Errorf("%w: longer than the %d bytes recorded", ErrBlobMismatch, br.want.Size)
		return 0, br.err
	}
	br.h.Write(p[:n])
	if err == io.EOF {
		switch {
		case br.n != br.want.Size:
			err = fmt.Errorf("%w: %d bytes, %d recorded", ErrBlobMismatch, br.n, br.want.Size)
		case hex.EncodeToString(br.h.Sum(nil)) != br.want.SHA256:
			err = fmt.Errorf("%w: SHA-256 differs", ErrBlobMismatch)
		}
	}
	br.err = err
	return n, err
}
