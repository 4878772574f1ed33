package hostlock

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func TestDaemonHolderRefusedAtOnce(t *testing.T) {
	dir := t.TempDir()
	l, err := Acquire(context.Background(), dir, RoleDaemon, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	for _, role := range []string{RoleDaemon, "apply", "remove"} {
		start := time.Now()
		_, err := Acquire(context.Background(), dir, role, 5*time.Second)
		var held *HeldError
		if !errors.As(err, &held) || held.PID != os.Getpid() || held.Role != RoleDaemon {
			t.Fatalf("%s: %v, want a HeldError naming this pid as the daemon", role, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s waited %v for a daemon", role, d)
		}
		if msg := err.Error(); !strings.Contains(msg, "the imdsguard daemon (pid ") || strings.Contains(msg, "\n") {
			t.Errorf("message %q", msg)
		}
	}
}

func TestOneShotHolderWaitedFor(t *testing.T) {
	dir := t.TempDir()
	l, err := Acquire(context.Background(), dir, "apply", 0)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		l2, err := Acquire(context.Background(), dir, "apply", 10*time.Second)
		if err == nil {
			l2.Release()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("second apply returned %v while the first held the lock", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("second apply after release: %v", err)
	}
	// And a one-shot holder past the wait is an error naming it.
	l, err = Acquire(context.Background(), dir, "remove", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	var held *HeldError
	if _, err := Acquire(context.Background(), dir, "apply", 50*time.Millisecond); !errors.As(err, &held) || held.Role != "remove" {
		t.Fatalf("got %v, want a HeldError naming remove", err)
	}
}

func TestReleaseOnClose(t *testing.T) {
	dir := t.TempDir()
	l, err := Acquire(context.Background(), dir, RoleDaemon, 0)
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	l, err = Acquire(context.Background(), dir, RoleDaemon, 0)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	l.Release()
}
