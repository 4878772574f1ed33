// Package hostlock keeps to one imdsguard writer per network namespace: the
// daemon holds the lock for its lifetime, and the one-shot apply and remove
// take it for their run, so none of them rebuilds a chain under another.
//
// It is an flock(2) on a file under /run/imdsguard named after the network
// namespace (the scope of the firewall it guards): the kernel drops the lock
// when the holder dies, so a crash leaves nothing to clean up, and only root
// can create files there. An abstract unix socket would also be per network
// namespace and vanish with its process, but any local user in the namespace
// (nobody, a host-network container) can bind the name first and so keep the
// daemon from starting; a lock file in a root-owned directory cannot be taken
// that way. The cost: two processes that see different /run (the daemon in
// a container, apply on the host) do not exclude each other.
package hostlock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultDir is where the lock lives; the unit's RuntimeDirectory.
const DefaultDir = "/run/imdsguard"

// RoleDaemon is the role of `imdsguard run`; others are one-shot commands.
const RoleDaemon = "run"

// Lock is a held lock; Release (or the process's death) lets it go.
type Lock struct{ f *os.File }

// Release drops the lock. The file stays: deleting it would let a second
// process lock a new file while a third still waits on the old one.
func (l *Lock) Release() error { return l.f.Close() }

// HeldError says who holds the lock.
type HeldError struct {
	Path string
	PID  int    // 0 when the holder has not written it yet
	Role string // "run" for the daemon, else the one-shot command
}

func (e *HeldError) Error() string {
	who := "another imdsguard"
	if e.Role == RoleDaemon {
		who = "the imdsguard daemon"
	} else if e.Role != "" {
		who = "imdsguard " + e.Role
	}
	if e.PID > 0 {
		who += fmt.Sprintf(" (pid %d)", e.PID)
	}
	return fmt.Sprintf("%s is running in this network namespace (it holds %s)", who, e.Path)
}

// Path is the lock file for the calling thread's network namespace.
func Path(dir string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return "", fmt.Errorf("identifying the network namespace: %w", err)
	}
	return filepath.Join(dir, fmt.Sprintf("netns-%d-%d.lock", st.Dev, st.Ino)), nil
}

// pollInterval is how often a waiting one-shot command retries the lock.
const pollInterval = 20 * time.Millisecond

// Acquire takes the lock for role. A daemon holding it is reported at once
// (a HeldError naming its pid); a one-shot holder is waited for up to wait,
// since apply and remove end within seconds and two boot scripts may well
// run apply at the same time.
// Cancelling ctx ends the wait.
func Acquire(ctx context.Context, dir, role string, wait time.Duration) (*Lock, error) {
	path, err := Path(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lock directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		held := holder(path)
		if held.Role == RoleDaemon || !time.Now().Before(deadline) {
			f.Close()
			return nil, held
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for %s: %w", held, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
	// Say who holds it, for the next one's message.
	err = f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt([]byte(fmt.Sprintf("%d %s\n", os.Getpid(), role)), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return &Lock{f: f}, nil
}

// holder reads "pid role" from the lock file.
func holder(path string) *HeldError {
	e := &HeldError{Path: path}
	b, err := os.ReadFile(path)
	if err != nil {
		return e
	}
	fields := strings.Fields(string(b))
	if len(fields) == 2 {
		e.PID, _ = strconv.Atoi(fields[0])
		e.Role = fields[1]
	}
	return e
}
