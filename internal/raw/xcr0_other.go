//go:build !amd64

package raw

// XCR0 is for x86-64 only: false elsewhere.
func XCR0() (uint64, bool) { return 0, false }
