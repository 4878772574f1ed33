package ecsconfig

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Read limits. ecs-init reads each file whole, so a file over the cap is a
// reported error, never a silently truncated read that could drop the line
// that decides. Real files are a few hundred bytes (ecs.config) to a few KiB
// (ecs.config.json); 1 MiB is two orders of magnitude of headroom and bounds
// one evaluation of the worst JSON (one key per 13 bytes) to about 80 ms
// (BenchmarkEvaluateBigJSON: 2.6 MB took 207 ms), while refusing a 200 MB
// file, /dev/zero or a FIFO costs a stat (BenchmarkLoadRefused).
const (
	MaxEnvFileSize  = 1 << 20
	MaxJSONFileSize = 1 << 20
	// ReadTimeout bounds all three reads together when the caller's context
	// has no earlier deadline: a regular file on a hung network or FUSE
	// mount can block a read forever.
	ReadTimeout = 2 * time.Second
)

// maxSymlinks is the kernel's limit (MAXSYMLINKS, ELOOP beyond it).
const maxSymlinks = 40

// hostPath maps an in-host path under the --host-root directory ("" or "/"
// for the current root) without resolving anything.
func hostPath(hostRoot, p string) string {
	if hostRoot == "" {
		hostRoot = "/"
	}
	return filepath.Join(hostRoot, p)
}

// resolveInRoot resolves every symlink in the in-host path p as the host
// would, with hostRoot as its "/": an absolute link target is taken relative
// to hostRoot, and ".." never climbs above it. It returns the resolved
// in-host path; components that do not exist are kept as they are, so the
// result is also where a new file would go. With hostRoot "/" this is what
// the kernel does. (Like any path walk it is not proof against a concurrent
// rename by someone who can write those directories; only root can.)
func resolveInRoot(hostRoot, p string) (string, error) {
	if hostRoot == "" {
		hostRoot = "/"
	}
	resolved := "/"
	rest := strings.Split(strings.TrimPrefix(path.Clean("/"+p), "/"), "/")
	links := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			resolved = path.Dir(resolved) // Dir("/") is "/": no climbing out
			continue
		}
		next := path.Join(resolved, c)
		fi, err := os.Lstat(filepath.Join(hostRoot, next))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				// Nothing below a missing component can be a link.
				return path.Join(append([]string{next}, rest...)...), nil
			}
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			resolved = next
			continue
		}
		if links++; links > maxSymlinks {
			return "", fmt.Errorf("%s: too many levels of symbolic links", p)
		}
		target, err := os.Readlink(filepath.Join(hostRoot, next))
		if err != nil {
			return "", err
		}
		if path.IsAbs(target) {
			resolved = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return resolved, nil
}

// ErrNotRegular is returned for a configuration path that is a FIFO, a
// device, a directory or a socket: reading those can block or never end.
var ErrNotRegular = errors.New("not a regular file")

// ErrTooLarge is returned for a file over its size cap.
var ErrTooLarge = errors.New("over the size limit")

// readRegular reads the whole regular file at name, at most limit bytes. It
// opens with O_NONBLOCK so that a FIFO cannot block the open, then checks
// the type on the open descriptor, so nothing is ever read from anything but
// a regular file. O_NOFOLLOW: links were resolved by resolveInRoot, and one
// appearing since then is refused rather than followed out of the host root.
func readRegular(name string, limit int64) ([]byte, error) {
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w (%s)", ErrNotRegular, fileKind(fi.Mode()))
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, fi.Size(), limit)
	}
	// The file may grow between the stat and the read: read one byte past
	// the limit to tell.
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, limit)
	}
	return b, nil
}

func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSocket != 0:
		return "a socket"
	}
	return "type " + m.Type().String()
}

// source is one configuration file: its in-host path and its size cap.
type source struct {
	path  string
	limit int64
}

var sources = [3]source{
	{InstanceConfigPath, MaxEnvFileSize},
	{UserConfigPath, MaxEnvFileSize},
	{JSONConfigPath, MaxJSONFileSize},
}

// Load reads the three files under hostRoot within ReadTimeout; see
// LoadContext.
func Load(hostRoot string) (Inputs, error) {
	return LoadContext(context.Background(), hostRoot)
}

// LoadContext reads the three files under hostRoot, resolving symlinks
// inside it. A missing file is normal and gives Present=false; anything else
// that stops a full read (not a regular file, over the size cap, a read
// error, the deadline) is one error per file naming it, and that file is
// reported absent. The deadline is ctx's or ReadTimeout, whichever is
// earlier. The returned Inputs carry in-host display paths and whatever was
// readable.
func LoadContext(ctx context.Context, hostRoot string) (Inputs, error) {
	return loadWith(ctx, hostRoot, readRegular)
}

type readFunc func(name string, limit int64) ([]byte, error)

// loadWith runs the reads off the caller's goroutine so the deadline holds
// even when a read blocks in the kernel; such a read's goroutine ends when
// the kernel returns, and its result is dropped.
func loadWith(ctx context.Context, hostRoot string, read readFunc) (Inputs, error) {
	ctx, cancel := context.WithTimeout(ctx, ReadTimeout)
	defer cancel()
	type result struct {
		f   File
		err error
	}
	done := make(chan [3]result, 1)
	go func() {
		var rs [3]result
		for i, s := range sources {
			rs[i].f, rs[i].err = readOne(hostRoot, s, read)
		}
		done <- rs
	}()
	var rs [3]result
	select {
	case rs = <-done:
	case <-ctx.Done():
		for i, s := range sources {
			rs[i] = result{f: File{Path: s.path}, err: fmt.Errorf("ecsconfig: reading %s: %w", s.path, ctx.Err())}
		}
	}
	errs := make([]error, 0, 3)
	for _, r := range rs {
		errs = append(errs, r.err)
	}
	return Inputs{InstanceConfig: rs[0].f, UserConfig: rs[1].f, JSONConfig: rs[2].f}, errors.Join(errs...)
}

// readOne reads one source; its error is a single line naming the in-host
// path (and where a link led, when it led elsewhere).
func readOne(hostRoot string, s source, read readFunc) (File, error) {
	f := File{Path: s.path}
	real, err := resolveInRoot(hostRoot, s.path)
	if err != nil {
		return f, fmt.Errorf("ecsconfig: resolving %s: %w", s.path, err)
	}
	b, err := read(hostPath(hostRoot, real), s.limit)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return f, nil
	case err != nil:
		return f, fmt.Errorf("ecsconfig: reading %s: %w", describe(s.path, real), unwrapPath(err))
	}
	f.Present, f.Content = true, string(b)
	return f, nil
}

// describe names a configuration path and, when a link redirected it, where.
func describe(display, real string) string {
	if real == display {
		return display
	}
	return display + " (-> " + real + ")"
}

// unwrapPath drops the host-side path an *fs.PathError carries: messages
// name in-host paths only.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		if errors.Is(pe.Err, syscall.ELOOP) {
			return errors.New("became a symlink while being read")
		}
		return pe.Err
	}
	return err
}
