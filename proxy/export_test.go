package proxy

import "time"

// SetParkAfter sets how long a spliced direction waits before parking, for
// the external tests and benchmarks; it returns a func that restores it.
func SetParkAfter(d time.Duration) (restore func()) {
	old := parkAfter
	parkAfter = d
	return func() { parkAfter = old }
}

// DefaultParkAfter is the production value, which TestMain shortens.
const DefaultParkAfter = defaultParkAfter
