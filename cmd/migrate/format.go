package main

import (
	"fmt"
	"time"
)

// plural is "1 thread", "2 threads".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// humanBytes is "512 B", "4.0 KiB", "412 MiB", "1.0 GiB": one decimal
// below 10 units, none above.
func humanBytes(n uint64) string {
	const units = "KMGTPE"
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n) / 1024
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if v < 10 {
		return fmt.Sprintf("%.1f %ciB", v, units[i])
	}
	return fmt.Sprintf("%.0f %ciB", v, units[i])
}

// msDuration prefers the exact duration of a report and falls back to its
// milliseconds (what a report decoded from JSON has).
func msDuration(d time.Duration, ms float64) float64 {
	if d > 0 {
		return float64(d) / float64(time.Millisecond)
	}
	return ms
}

// formatMS is "380 ms", "3.2 ms", "1.25 s".
func formatMS(ms float64) string {
	switch {
	case ms >= 1000:
		return fmt.Sprintf("%.2f s", ms/1000)
	case ms >= 10:
		return fmt.Sprintf("%.0f ms", ms)
	default:
		return fmt.Sprintf("%.1f ms", ms)
	}
}
