package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/ecsconfig"
)

// The ECS configuration files are read off the repair path. A sync never
// opens them: an operator's broken file (a FIFO, whose open blocks until a
// writer comes; a link to /dev/zero; a hung filesystem) must not stall the
// firewall repair. The daemon reads them in a loop of its own, on inotify
// events in /etc/ecs and /var/lib/ecs and every resync interval, each read
// bounded by ecsReadTimeout; a sync uses the last read, and when that read
// failed says so and claims nothing it did not see.

// ecsReadTimeout bounds one read of the three files and, in enforce mode,
// the rewrite of ecs.config. ecsconfig's reads give up at ReadTimeout with
// an error naming each file; this backstop covers the rest (the write).
const ecsReadTimeout = ecsconfig.ReadTimeout + time.Second

// ecsMinInterval spaces reads when a writer sends a burst of events.
const ecsMinInterval = 100 * time.Millisecond

// ecsFiles is one read of the ECS configuration files.
type ecsFiles struct {
	in    ecsconfig.Inputs
	res   ecsconfig.Result
	err   error     // when set, in and res are empty
	at    time.Time // when the read began
	wrote bool      // enforce mode wrote ECS_AWSVPC_BLOCK_IMDS=true
	// writeFailed: enforce mode could not write it (apply exits non-zero).
	writeFailed bool
}

// same reports whether a sync would see f and g alike.
func (f ecsFiles) same(g ecsFiles) bool {
	if (f.err == nil) != (g.err == nil) || f.err != nil && f.err.Error() != g.err.Error() {
		return false
	}
	return f.wrote == g.wrote && f.writeFailed == g.writeFailed && f.in == g.in && reflect.DeepEqual(f.res, g.res)
}

// readECSFiles reads (and in enforce mode first fixes) the files.
// ecsconfig refuses what is not a regular file and what is over its size
// cap, and has a deadline of its own; boundedReader adds that at most one
// read (or write) that the kernel does not return from is ever pending.
func readECSFiles(ctx context.Context, hostRoot string, enforce bool) ecsFiles {
	f := ecsFiles{at: time.Now()}
	if enforce {
		changed, err := ecsconfig.Enforce(hostRoot)
		if err != nil {
			// ecsconfig's WriteError names the file; apply prints it.
			f.err, f.writeFailed = err, true
			return f
		}
		f.wrote = changed
	}
	in, err := ecsconfig.LoadContext(ctx, hostRoot)
	if err != nil {
		f.err = fmt.Errorf("cannot read the ECS configuration: %w", err)
		return f
	}
	res, err := ecsconfig.Evaluate(in)
	if err != nil {
		f.err = fmt.Errorf("cannot evaluate the ECS configuration: %w", err)
		return f
	}
	f.in, f.res = in, res
	return f
}

// boundedReader runs a read that may block forever (a FIFO's open cannot
// be interrupted) in a goroutine it can abandon. At most one read is ever
// outstanding: while an abandoned one still blocks, no other starts, so a
// stuck file costs one goroutine and one descriptor, not one per attempt.
type boundedReader struct {
	read    func(ctx context.Context) ecsFiles
	timeout time.Duration

	mu      sync.Mutex
	pending chan ecsFiles // an abandoned read's result, until it arrives
	since   time.Time     // when the pending read began
}

// get returns the read's result, or an error result once the timeout or
// ctx ends it. The error for a read that does not return reads the same on
// every attempt until it does, so it is logged once.
func (r *boundedReader) get(ctx context.Context) ecsFiles {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if r.pending != nil {
		select {
		case <-r.pending:
			// It finished at last; what it read may be old, so read again.
			r.pending = nil
		default:
			return ecsFiles{at: now, err: r.blocked()}
		}
	}
	done := make(chan ecsFiles, 1)
	go func() { done <- r.read(ctx) }()
	t := time.NewTimer(r.timeout)
	defer t.Stop()
	select {
	case f := <-done:
		return f
	case <-t.C:
		r.pending, r.since = done, now
		return ecsFiles{at: now, err: r.blocked()}
	case <-ctx.Done():
		r.pending, r.since = done, now
		return ecsFiles{at: now, err: fmt.Errorf("cannot read the ECS configuration: %w", ctx.Err())}
	}
}

// blocked describes the pending read. Caller holds mu.
func (r *boundedReader) blocked() error {
	return fmt.Errorf("cannot read the ECS configuration: the read started at %s has not returned within %v (a FIFO or a hung filesystem?); no new read until it does",
		r.since.Format(time.RFC3339), r.timeout)
}

// ecsView is the daemon's last read of the ECS configuration files. (The
// running ECS agent's environment comes with the container snapshot.)
type ecsView struct {
	mu    sync.Mutex
	last  ecsFiles      // the newest read, failed or not
	good  ecsFiles      // the newest read that succeeded; at is zero before one
	ready chan struct{} // closed by the first read
}

func newECSView() *ecsView {
	return &ecsView{ready: make(chan struct{})}
}

// set stores a read and reports whether a sync would see a difference.
func (v *ecsView) set(f ecsFiles) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	first := v.last.at.IsZero()
	changed := first || !v.last.same(f)
	v.last = f
	if f.err == nil {
		v.good = f
	}
	if first {
		close(v.ready)
	}
	return changed
}

// get returns the newest read and the newest good one. Before the first
// read it waits for it (reads are bounded). A read older than maxAge is
// reported as an error: a stuck loop must not look current.
func (v *ecsView) get(ctx context.Context, maxAge time.Duration) (last, good ecsFiles) {
	select {
	case <-v.ready:
	case <-ctx.Done():
		return ecsFiles{at: time.Now(), err: errors.New("the ECS configuration has not been read yet")}, ecsFiles{}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	last, good = v.last, v.good
	if age := time.Since(last.at); last.err == nil && age > maxAge {
		last = ecsFiles{at: last.at, err: fmt.Errorf("the last read of the ECS configuration is %s old", age.Round(time.Second))}
	}
	return last, good
}

// rereadECS is the ECS loop's body: read the files, and sync when they
// changed.
func (a *Agent) rereadECS(ctx context.Context) error {
	a.watchECSDirs()
	f := a.ecsReader.get(ctx)
	changed := a.ecsView.set(f)
	a.noteECSError(f)
	if f.wrote {
		a.log.Warn("wrote ECS_AWSVPC_BLOCK_IMDS=true to /etc/ecs/ecs.config; the ECS agent applies it after a restart")
	}
	if changed && a.runner != nil {
		a.runner.Trigger()
	}
	// A failed read is reported, not retried fast: retrying cannot fix a
	// file, and the next event or resync reads again.
	return nil
}

// noteECSError logs a change in whether the files can be read: one line
// when a read starts failing or fails differently, one when it recovers.
func (a *Agent) noteECSError(f ecsFiles) {
	msg := ""
	if f.err != nil {
		msg = f.err.Error()
	}
	a.mu.Lock()
	prev := a.ecsErrMsg
	a.ecsErrMsg = msg
	a.mu.Unlock()
	switch {
	case msg == prev:
	case msg != "":
		a.log.WithError(f.err).Error("ECS configuration unreadable; status shows the last good read as stale and claims no ECS setting; the firewall is still enforced")
	default:
		a.log.Info("ECS configuration readable again")
	}
}

// newECSReader reads the files with a deadline; enforce also writes
// ECS_AWSVPC_BLOCK_IMDS=true into ecs.config.
func (a *Agent) newECSReader(enforce bool) *boundedReader {
	return &boundedReader{timeout: ecsReadTimeout, read: func(ctx context.Context) ecsFiles {
		return readECSFiles(ctx, a.cfg.HostRoot, enforce)
	}}
}

// maxECSAge is how old the loop's read may be before syncs call it stale:
// the loop reads every resync interval, each read and the ECS agent's
// environment bounded; only a stuck loop reaches this.
func (a *Agent) maxECSAge() time.Duration {
	return 2*a.cfg.ResyncInterval + 2*ecsReadTimeout
}

// ecsDirs are watched for changes to the three files.
var ecsDirs = []string{filepath.Dir(ecsconfig.UserConfigPath), filepath.Dir(ecsconfig.InstanceConfigPath)}

// ecsWatch is the inotify descriptor. Its raw number is kept because
// os.File.Fd would switch the file back to blocking mode, and the reader
// relies on the poller to be woken by Close.
type ecsWatch struct {
	f  *os.File
	fd int
}

// startECSWatch opens the inotify descriptor and follows it until ctx ends,
// triggering a read on every event. Without inotify the resync still reads.
func (a *Agent) startECSWatch(ctx context.Context, wg *sync.WaitGroup) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		a.log.WithError(err).Warn("no inotify: the ECS configuration is read every resync interval only")
		return
	}
	f := os.NewFile(uintptr(fd), "inotify")
	a.ecsWatch = &ecsWatch{f: f, fd: fd}
	stop := context.AfterFunc(ctx, func() { f.Close() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer stop()
		buf := make([]byte, 4096)
		for {
			// Which file changed does not matter: every read reads all three.
			if _, err := f.Read(buf); err != nil {
				if ctx.Err() == nil {
					a.log.WithError(err).Warn("inotify on the ECS configuration failed; reading every resync interval only")
				}
				return
			}
			a.ecsRunner.Trigger()
		}
	}()
}

// watchECSDirs (re)adds the directories on every read: they may appear
// after the daemon starts (ECS installed later) or be replaced, and adding
// a watched directory again only refreshes its mask. Only the loop calls it.
func (a *Agent) watchECSDirs() {
	w := a.ecsWatch
	if w == nil {
		return
	}
	const mask = unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_CREATE |
		unix.IN_DELETE | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF
	for _, d := range ecsDirs {
		// A missing directory is normal (no ECS yet): the resync reads.
		_, _ = unix.InotifyAddWatch(w.fd, filepath.Join(a.cfg.HostRoot, d), mask)
	}
}
