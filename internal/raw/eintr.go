//go:build linux

package raw

import (
	"errors"

	"golang.org/x/sys/unix"
)

// IgnoringEINTR calls fn again for as long as it fails with EINTR (a signal
// arrived while it waited), and returns its last error.
func IgnoringEINTR(fn func() error) error {
	for {
		if err := fn(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// IgnoringEINTR2 is IgnoringEINTR for a call that returns a value too.
func IgnoringEINTR2[T any](fn func() (T, error)) (T, error) {
	for {
		v, err := fn()
		if !errors.Is(err, unix.EINTR) {
			return v, err
		}
	}
}
