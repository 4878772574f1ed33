package ecsconfig

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Rewrite returns /etc/ecs/ecs.config content that makes the agent see
// ECS_AWSVPC_BLOCK_IMDS=true. Every line ecs-init would parse as that key
// gets the value true in place (so no earlier line can win over it and no
// duplicate is added); a line whose value the agent already reads as true is
// left alone. Only when there is no such line is one appended. All other
// bytes are kept. changed reports whether the content differs.
func Rewrite(content string) (out string, changed bool) {
	lines := strings.Split(content, "\n")
	found := false
	for i, line := range lines {
		key, val, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || key != EnvKey {
			continue
		}
		found = true
		if kind, b := classify(val); kind == valueBool && b {
			continue
		}
		indent := line[:len(line)-len(strings.TrimLeft(line, " \t"))]
		cr := ""
		if strings.HasSuffix(line, "\r") {
			cr = "\r"
		}
		lines[i] = indent + EnvKey + "=true" + cr
		changed = true
	}
	if found {
		return strings.Join(lines, "\n"), changed
	}
	nl := "\n"
	if strings.Contains(content, "\r\n") {
		nl = "\r\n"
	}
	if content != "" && !strings.HasSuffix(content, "\n") {
		content += nl
	}
	return content + EnvKey + "=true" + nl, true
}

// Enforce makes <hostRoot>/etc/ecs/ecs.config set ECS_AWSVPC_BLOCK_IMDS=true
// and reports whether it wrote anything. The agent only picks the change up
// when ecs-init restarts it; that is the caller's decision.
//
// A symlink is followed inside the host root (as ecs-init on the host would
// follow it) and the file it leads to is rewritten in place, atomically,
// keeping every other line, its mode and owner; the link itself is never
// replaced. A file that cannot be read in full (not a regular file, over
// MaxEnvFileSize) is refused: rewriting what was not read would lose lines.
// Every failure is a *WriteError.
func Enforce(hostRoot string) (changed bool, err error) {
	real, err := resolveInRoot(hostRoot, UserConfigPath)
	if err != nil {
		return false, &WriteError{Path: UserConfigPath, Err: err}
	}
	name := describe(UserConfigPath, real)
	path := hostPath(hostRoot, real)
	old, err := readRegular(path, MaxEnvFileSize)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, &WriteError{Path: name, Err: fmt.Errorf("reading: %w", unwrapPath(err))}
	}
	out, changed := Rewrite(string(old))
	if !changed {
		return false, nil
	}
	if err := writeFileAtomic(path, []byte(out), exists); err != nil {
		return false, &WriteError{Path: name, Err: unwrapPath(err)}
	}
	return true, nil
}

// WriteError is a failed Enforce: `imdsguard apply` exits non-zero on it.
type WriteError struct {
	Path string // in-host, with where a link led
	Err  error
}

func (e *WriteError) Error() string { return "ecsconfig: writing " + e.Path + ": " + e.Err.Error() }
func (e *WriteError) Unwrap() error { return e.Err }

// writeFileAtomic replaces path, a regular file or nothing (links were
// resolved by the caller), so that readers (ecs-init at boot, possibly
// after a crash) see either the old or the new file, never a partial one.
func writeFileAtomic(path string, data []byte, exists bool) (err error) {
	dir := filepath.Dir(path)
	mode := fs.FileMode(0o644)
	uid, gid := -1, -1
	if exists {
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		// Renaming over a symlink would silently replace it with a file.
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("%s is no longer a regular file; refusing to replace it", path)
		}
		mode = fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			uid, gid = int(st.Uid), int(st.Gid)
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}

	tmp, err := os.CreateTemp(dir, ".ecs.config.tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	// CreateTemp uses 0600; Chmod after creation also escapes the umask.
	if err = tmp.Chmod(mode); err != nil {
		return err
	}
	if uid >= 0 {
		if err = tmp.Chown(uid, gid); err != nil {
			return err
		}
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	// Persist the rename itself.
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
