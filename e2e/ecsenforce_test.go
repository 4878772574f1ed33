package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/e2e/sandbox"
	"github.com/imdsguard/imdsguard/status"
)

// TestApplyECSConfigThroughLink is issue 10's layout: /etc/ecs/ecs.config
// under the host root is an absolute link to /opt/ecs/ecs.config. apply in
// enforce mode rewrites the real file, every line kept, the link intact, and
// check reads the same file; an unwritable /etc/ecs fails apply.
func TestApplyECSConfigThroughLink(t *testing.T) {
	e := newEnv(t, sandbox.Options{NoDockerd: true})
	link := filepath.Join(e.hostRoot, "etc/ecs/ecs.config")
	target := filepath.Join(e.hostRoot, "opt/ecs/ecs.config")
	orig := "ECS_CLUSTER=e2e\nECS_ENABLE_TASK_IAM_ROLE=true\nECS_RESERVED_MEMORY=256\n"
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(target, []byte(orig), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/opt/ecs/ecs.config", link); err != nil {
		t.Fatal(err)
	}

	out, code := e.cli(t, "apply", "--ecs-config-mode", "enforce")
	if code != 0 {
		t.Fatalf("apply: exit %d\n%s", code, out)
	}
	b, err := os.ReadFile(target)
	if err != nil || string(b) != orig+"ECS_AWSVPC_BLOCK_IMDS=true\n" {
		t.Fatalf("target = %q, %v", b, err)
	}
	if dest, err := os.Readlink(link); err != nil || dest != "/opt/ecs/ecs.config" {
		t.Fatalf("link = %q, %v", dest, err)
	}
	if fi, err := os.Stat(target); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("target mode: %v, %v", fi.Mode(), err)
	}
	out, _ = e.cli(t, "check", "--json")
	var st status.Status
	if err := json.NewDecoder(strings.NewReader(out)).Decode(&st); err != nil {
		t.Fatalf("check --json: %v\n%s", err, out)
	}
	if !st.ECSConfig.AWSVPCBlockIMDS || st.ECSConfig.Config == nil || !strings.HasPrefix(st.ECSConfig.Config.Source, "/etc/ecs/ecs.config:") {
		t.Errorf("check reads %+v", st.ECSConfig)
	}

	// A read-only /etc/ecs: apply was asked to write and could not.
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(link, []byte("ECS_CLUSTER=e2e\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(link)
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount read-only: %v", err)
	}
	out, code = e.cli(t, "apply", "--ecs-config-mode", "enforce")
	if code == 0 || !strings.Contains(out, "imdsguard apply: rules in place, but ecsconfig: writing /etc/ecs/ecs.config") {
		t.Fatalf("apply on a read-only /etc/ecs: exit %d\n%s", code, out)
	}
}

// TestCheckRefusesUnreadableECSConfig: ecs.config as a FIFO, a link to a
// device, or 200 MB: check answers at once (exit 2) with one line naming the
// file, instead of blocking or reading without end.
func TestCheckRefusesUnreadableECSConfig(t *testing.T) {
	e := newEnv(t, sandbox.Options{NoDockerd: true})
	cfg := filepath.Join(e.hostRoot, "etc/ecs/ecs.config")
	for _, tc := range []struct {
		name, want string
		make       func() error
	}{
		{"fifo", "a FIFO", func() error { return unix.Mkfifo(cfg, 0o644) }},
		{"link to /dev/zero", "(-> /dev/zero): not a regular file (a character device)", func() error {
			dev := filepath.Join(e.hostRoot, "dev/zero")
			if err := os.MkdirAll(filepath.Dir(dev), 0o755); err != nil {
				return err
			}
			if err := unix.Mknod(dev, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))); err != nil && !os.IsExist(err) {
				return err
			}
			return os.Symlink("/dev/zero", cfg)
		}},
		{"200 MB", "209715200 bytes, the limit is 1048576", func() error {
			if err := os.WriteFile(cfg, nil, 0o644); err != nil {
				return err
			}
			return os.Truncate(cfg, 200<<20)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.Remove(cfg); err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			if err := tc.make(); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			out, code := e.cli(t, "check", "--log-level", "error")
			took := time.Since(start)
			var line string
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, "imdsguard check:") {
					line = l
				}
			}
			t.Logf("exit %d after %v: %s", code, took, line)
			if code != 2 || !strings.Contains(line, "/etc/ecs/ecs.config") || !strings.Contains(line, tc.want) {
				t.Fatalf("exit %d, want 2 and a line naming the file and %q:\n%s", code, tc.want, out)
			}
			if took > 5*time.Second {
				t.Errorf("check took %v", took)
			}
		})
	}
}
