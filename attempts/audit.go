package attempts

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
)

// AuditLogMax is the audit log's size cap: past it the file is renamed to
// FILE.1 (replacing the last one) and a new one begins, so at most twice
// this is on disk.
const AuditLogMax = 64 << 20

// AuditLog writes one JSON object per attempt, one a line, for shipping.
type AuditLog struct {
	path string
	max  int64
	mu   sync.Mutex
	f    *os.File
	size int64
}

// OpenAuditLog opens (appends to) path, mode 0600. max <= 0 is
// AuditLogMax.
func OpenAuditLog(path string, max int64) (*AuditLog, error) {
	if max <= 0 {
		max = AuditLogMax
	}
	l := &AuditLog{path: path, max: max}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *AuditLog) open() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("opening the audit log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("opening the audit log: %w", err)
	}
	l.f, l.size = f, st.Size()
	return nil
}

// Write appends a; a write that would pass the cap rotates first.
func (l *AuditLog) Write(a Attempt) error {
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		if err := l.open(); err != nil {
			return err
		}
	}
	if l.size > 0 && l.size+int64(len(b)) > l.max {
		l.f.Close()
		l.f = nil
		if err := os.Rename(l.path, l.path+".1"); err != nil {
			return fmt.Errorf("rotating the audit log: %w", err)
		}
		if err := l.open(); err != nil {
			return err
		}
	}
	n, err := l.f.Write(b)
	l.size += int64(n)
	if err != nil {
		return fmt.Errorf("writing the audit log: %w", err)
	}
	return nil
}

// Close closes the file.
func (l *AuditLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
