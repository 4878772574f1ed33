package ecsconfig

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestResolveInRoot(t *testing.T) {
	root := t.TempDir()
	for _, l := range []struct{ link, target string }{
		{"/etc/ecs/abs", "/opt/ecs/ecs.config"},
		{"/etc/ecs/rel", "../../opt/ecs/ecs.config"},
		{"/etc/ecs/climb", "../../../../../../opt/ecs/ecs.config"},
		{"/etc/ecs/dirlink", "/opt/ecs"},
		{"/etc/ecs/chain", "abs"},
		{"/etc/ecs/loop", "loop"},
		{"/etc/ecs/dangling", "/nowhere/ecs.config"},
	} {
		symlinkHostFile(t, root, l.link, l.target)
	}
	writeHostFile(t, root, "/opt/ecs/ecs.config", "x", 0o644)
	for _, tc := range []struct{ in, want, err string }{
		{in: "/etc/ecs/abs", want: "/opt/ecs/ecs.config"},
		{in: "/etc/ecs/rel", want: "/opt/ecs/ecs.config"},
		{in: "/etc/ecs/climb", want: "/opt/ecs/ecs.config"},
		{in: "/etc/ecs/dirlink/ecs.config", want: "/opt/ecs/ecs.config"},
		{in: "/etc/ecs/chain", want: "/opt/ecs/ecs.config"},
		{in: "/etc/ecs/dangling", want: "/nowhere/ecs.config"},
		{in: "/etc/ecs/missing", want: "/etc/ecs/missing"},
		{in: "/../../etc/ecs/abs", want: "/opt/ecs/ecs.config"},
		{in: "/etc/ecs/loop", err: "too many levels"},
	} {
		got, err := resolveInRoot(root, tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %q, %v; want error %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s -> %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// TestLoadRefuses covers every way a configuration path can be something
// that must not be read: each is one error line naming the file, nothing is
// read (a FIFO would block, /dev/zero never ends), and the other files are
// still read.
func TestLoadRefuses(t *testing.T) {
	tests := []struct {
		name string
		make func(t *testing.T, root string)
		path string
		want error
		msg  string
	}{
		{
			name: "FIFO",
			make: func(t *testing.T, root string) {
				p := filepath.Join(root, UserConfigPath)
				os.MkdirAll(filepath.Dir(p), 0o755)
				if err := syscall.Mkfifo(p, 0o644); err != nil {
					t.Fatal(err)
				}
			},
			path: UserConfigPath, want: ErrNotRegular, msg: "a FIFO",
		},
		{
			name: "directory",
			make: func(t *testing.T, root string) {
				os.MkdirAll(filepath.Join(root, JSONConfigPath), 0o755)
			},
			path: JSONConfigPath, want: ErrNotRegular, msg: "a directory",
		},
		{
			name: "200 MB file",
			make: func(t *testing.T, root string) {
				p := writeHostFile(t, root, UserConfigPath, "", 0o644)
				if err := os.Truncate(p, 200<<20); err != nil { // sparse: costs no disk
					t.Fatal(err)
				}
			},
			path: UserConfigPath, want: ErrTooLarge, msg: "209715200 bytes, the limit is 1048576",
		},
		{
			name: "JSON of 200,000 keys",
			make: func(t *testing.T, root string) {
				writeHostFile(t, root, JSONConfigPath, bigJSON(200_000), 0o644)
			},
			path: JSONConfigPath, want: ErrTooLarge, msg: "the limit is 1048576",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			writeHostFile(t, root, InstanceConfigPath, "ECS_CLUSTER=prod\n", 0o644)
			tc.make(t, root)
			start := time.Now()
			in, err := Load(root)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.path) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Load error = %v, want %v naming %s and %q", err, tc.want, tc.path, tc.msg)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("Load took %v", d)
			}
			if !in.InstanceConfig.Present {
				t.Error("the readable file was not returned")
			}
			for _, f := range []File{in.UserConfig, in.JSONConfig} {
				if f.Path == tc.path && (f.Present || f.Content != "") {
					t.Errorf("%s reported present: %+v", f.Path, f)
				}
			}
		})
	}
}

// TestReadRegularDevice reads /dev/zero, which never ends: refused on its
// type with nothing read. (Under a host root a link to /dev/zero means the
// host root's /dev/zero, so the device is opened directly here.)
func TestReadRegularDevice(t *testing.T) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := readRegular("/dev/zero", MaxEnvFileSize)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), "a character device") {
		t.Fatalf("readRegular(/dev/zero) = %v, want a refusal naming the type", err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<10 {
		t.Errorf("allocated %d bytes refusing /dev/zero", grew)
	}
}

func TestLoadDeviceThroughLinkInHostRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a device node in the host root")
	}
	root := t.TempDir()
	dev := filepath.Join(root, "dev/zero")
	os.MkdirAll(filepath.Dir(dev), 0o755)
	if err := syscall.Mknod(dev, syscall.S_IFCHR|0o666, 1<<8|5); err != nil { // 1:5 is /dev/zero
		t.Fatal(err)
	}
	symlinkHostFile(t, root, UserConfigPath, "/dev/zero")
	_, err := Load(root)
	if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), "/etc/ecs/ecs.config (-> /dev/zero)") {
		t.Fatalf("Load = %v, want a refusal naming the link and its target", err)
	}
}

// TestLoadDeadline: a read that blocks in the kernel (a hung network mount)
// ends the load at the context's deadline, one error per file.
func TestLoadDeadline(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	blocking := func(string, int64) ([]byte, error) { <-release; return nil, nil }
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	in, err := loadWith(ctx, t.TempDir(), blocking)
	if d := time.Since(start); d > time.Second {
		t.Errorf("load took %v with a 50ms deadline", d)
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), UserConfigPath) {
		t.Fatalf("err = %v, want the deadline naming the files", err)
	}
	if in.UserConfig.Present || in.UserConfig.Path != UserConfigPath {
		t.Errorf("UserConfig = %+v", in.UserConfig)
	}
}

// TestReadRegularLimit pins the cap's boundary: exactly the limit is read,
// one byte more is refused.
func TestReadRegularLimit(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(strings.Repeat("A", 100)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readRegular(p, 99); !errors.Is(err, ErrTooLarge) {
		t.Errorf("100 bytes with limit 99: %v", err)
	}
	if b, err := readRegular(p, 100); err != nil || len(b) != 100 {
		t.Errorf("100 bytes with limit 100: %d, %v", len(b), err)
	}
}
