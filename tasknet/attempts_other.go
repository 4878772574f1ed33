//go:build !linux

package tasknet

import "github.com/imdsguard/imdsguard/attempts"

// OpenAttempts fails: NFLOG is Linux's.
func OpenAttempts(path, pauseID string, sink attempts.Sink) (*attempts.Reader, error) {
	return attempts.Open(0, pauseID, sink)
}
