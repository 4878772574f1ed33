package status

import (
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// connectAs connects to the unix socket at path with the filesystem
// identity uid/gid (no supplementary group but the caller's) on this
// thread only, which is what the kernel checks for a socket's mode.
// Dropping fsuid from 0 also drops CAP_DAC_OVERRIDE for the thread.
func connectAs(t *testing.T, path string, uid, gid int) error {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	unix.Setfsgid(gid)
	unix.Setfsuid(uid)
	err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
	unix.Setfsuid(0)
	unix.Setfsgid(0)
	return err
}

// TestStatusGroupCanRead: with --status-group the socket is 0660 and the
// group's: a member that is not root can connect, anyone else cannot; by
// default it is root's alone.
func TestStatusGroupCanRead(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: changes a socket's group and connects as another user")
	}
	g, err := user.LookupGroup("nogroup")
	if err != nil {
		t.Skipf("no group nogroup to test with: %v", err)
	}
	gid, _ := strconv.Atoi(g.Gid)
	if groups, _ := os.Getgroups(); slices.Contains(groups, gid) {
		t.Skipf("the test process is itself in %s", g.Name)
	}
	const nobody = 65534
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {})
	for _, tc := range []struct {
		group           string
		mode            os.FileMode
		member, outside bool // may connect
	}{
		{"", 0o600, false, false},
		{g.Name, 0o660, true, false},
	} {
		dir := t.TempDir()
		// t.TempDir's own parent is 0700: nobody must reach the socket.
		for _, d := range []string{filepath.Dir(dir), dir} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		path := filepath.Join(dir, "status.sock")
		stop, err := serveStatus(path, tc.group, statusEndpoint, ok, testLog(t))
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != tc.mode || (tc.group != "" && int(st.Gid) != gid) {
			t.Errorf("group %q: mode %v gid %d", tc.group, fi.Mode().Perm(), st.Gid)
		}
		if err := connectAs(t, path, nobody, gid); (err == nil) != tc.member {
			t.Errorf("group %q: nobody in %s connects: %v", tc.group, g.Name, err)
		}
		if err := connectAs(t, path, nobody, nobody-1); (err == nil) != tc.outside {
			t.Errorf("group %q: nobody outside the group connects: %v", tc.group, err)
		}
		if err := stop(); err != nil {
			t.Error(err)
		}
	}
}
