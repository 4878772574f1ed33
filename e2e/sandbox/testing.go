package sandbox

import (
	"context"
	"os"
	"testing"
	"time"
)

// NewT builds a sandbox for a test: it skips when not root, fails the test
// when the sandbox cannot be built, and closes it in t.Cleanup (also on
// panic). A go test -timeout kills the binary without running cleanups, so
// the sandbox is also closed shortly before the test's deadline, and the
// next New sweeps what a killed binary left.
func NewT(t testing.TB, opts Options) *Sandbox {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("sandbox: skipped, needs root (network namespaces, dockerd)")
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := New(ctx, opts)
	if err != nil {
		t.Fatalf("sandbox: %v", err)
	}
	var guard *time.Timer
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := d.Deadline(); ok && time.Until(dl) > 30*time.Second {
			guard = time.AfterFunc(time.Until(dl)-15*time.Second, func() { _ = s.Close() })
		}
	}
	t.Cleanup(func() {
		if guard != nil {
			guard.Stop()
		}
		if err := s.Close(); err != nil {
			t.Errorf("sandbox close: %v", err)
		}
	})
	return s
}
