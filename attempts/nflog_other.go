//go:build !linux

package attempts

import "errors"

// Reader reads NFLOG, which only Linux has.
type Reader struct{}

// Sink takes events.
type Sink interface {
	Offer(Event)
	Lost(n uint64)
}

// Open fails: NFLOG is Linux's.
func Open(netnsFd int, ns string, sink Sink) (*Reader, error) {
	return nil, errors.New("reading NFLOG needs Linux")
}

// Close does nothing.
func (r *Reader) Close() error { return nil }
