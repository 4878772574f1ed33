package ecsconfig

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestRewrite(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string
		changed bool
	}{
		{
			name:    "in place",
			in:      "ECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=false\nECS_LOGLEVEL=info\n",
			want:    "ECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=true\nECS_LOGLEVEL=info\n",
			changed: true,
		},
		{
			name:    "every duplicate is fixed, none appended",
			in:      "ECS_AWSVPC_BLOCK_IMDS=false\nECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=\"true\"\n",
			want:    "ECS_AWSVPC_BLOCK_IMDS=true\nECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=true\n",
			changed: true,
		},
		{
			name:    "earlier false before a later true is still fixed",
			in:      "ECS_AWSVPC_BLOCK_IMDS=false\nECS_AWSVPC_BLOCK_IMDS=true\n",
			want:    "ECS_AWSVPC_BLOCK_IMDS=true\nECS_AWSVPC_BLOCK_IMDS=true\n",
			changed: true,
		},
		{
			name: "already true",
			in:   "ECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=true\n",
			want: "ECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=true\n",
		},
		{
			name: "values the agent reads as true are left alone",
			in:   "ECS_AWSVPC_BLOCK_IMDS=True\nECS_AWSVPC_BLOCK_IMDS= 1\n",
			want: "ECS_AWSVPC_BLOCK_IMDS=True\nECS_AWSVPC_BLOCK_IMDS= 1\n",
		},
		{
			name:    "no trailing newline",
			in:      "ECS_CLUSTER=prod",
			want:    "ECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=true\n",
			changed: true,
		},
		{
			name:    "empty file",
			in:      "",
			want:    "ECS_AWSVPC_BLOCK_IMDS=true\n",
			changed: true,
		},
		{
			name:    "in place without trailing newline",
			in:      "ECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=0",
			want:    "ECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=true",
			changed: true,
		},
		{
			name: "near-misses and other lines are kept byte for byte",
			in: "# managed by user-data\n#ECS_AWSVPC_BLOCK_IMDS=false\nexport ECS_AWSVPC_BLOCK_IMDS=false\n" +
				"ECS_AWSVPC_BLOCK_IMDS = false\n  ECS_CLUSTER = x \t\n\nECS_INSTANCE_ATTRIBUTES={\"a\":\"=\"}\n\xff\n",
			want: "# managed by user-data\n#ECS_AWSVPC_BLOCK_IMDS=false\nexport ECS_AWSVPC_BLOCK_IMDS=false\n" +
				"ECS_AWSVPC_BLOCK_IMDS = false\n  ECS_CLUSTER = x \t\n\nECS_INSTANCE_ATTRIBUTES={\"a\":\"=\"}\n\xff\nECS_AWSVPC_BLOCK_IMDS=true\n",
			changed: true,
		},
		{
			name:    "indentation and CRLF of the replaced line are kept",
			in:      "ECS_CLUSTER=prod\r\n  ECS_AWSVPC_BLOCK_IMDS=false # no\r\nECS_LOGLEVEL=info\r\n",
			want:    "ECS_CLUSTER=prod\r\n  ECS_AWSVPC_BLOCK_IMDS=true\r\nECS_LOGLEVEL=info\r\n",
			changed: true,
		},
		{
			name:    "CRLF file gets a CRLF line appended",
			in:      "ECS_CLUSTER=prod\r\nECS_LOGLEVEL=info",
			want:    "ECS_CLUSTER=prod\r\nECS_LOGLEVEL=info\r\nECS_AWSVPC_BLOCK_IMDS=true\r\n",
			changed: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, changed := Rewrite(tc.in)
			if got != tc.want || changed != tc.changed {
				t.Fatalf("Rewrite(%q) = %q, %v\n  want %q, %v", tc.in, got, changed, tc.want, tc.changed)
			}
			again, changed := Rewrite(got)
			if changed || again != got {
				t.Errorf("second Rewrite changed %q to %q (changed=%v)", got, again, changed)
			}
			// Whatever /var/lib and the JSON file say, the result must be true.
			res, err := Evaluate(Inputs{
				InstanceConfig: File{Path: InstanceConfigPath, Present: true, Content: "ECS_AWSVPC_BLOCK_IMDS=false\n"},
				UserConfig:     File{Path: UserConfigPath, Present: true, Content: got},
				JSONConfig:     File{Path: JSONConfigPath, Present: true, Content: `{"AWSVPCBlockInstanceMetdata": false}`},
			})
			if err != nil || !res.AWSVPCBlockIMDS || !strings.HasPrefix(res.Source, UserConfigPath+":") {
				t.Errorf("after Rewrite, Evaluate = %+v, %v; want true from %s", res, err, UserConfigPath)
			}
		})
	}
}

func writeHostFile(t *testing.T, root, p, content string, mode fs.FileMode) string {
	t.Helper()
	full := filepath.Join(root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(full, mode); err != nil { // escape the umask
		t.Fatal(err)
	}
	return full
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestEnforceCreatesAbsentFile(t *testing.T) {
	root := t.TempDir()
	changed, err := Enforce(root)
	if err != nil || !changed {
		t.Fatalf("Enforce = %v, %v; want true, nil", changed, err)
	}
	p := filepath.Join(root, "etc/ecs/ecs.config")
	if got := readFile(t, p); got != "ECS_AWSVPC_BLOCK_IMDS=true\n" {
		t.Errorf("content = %q", got)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("mode = %v, want 0644", fi.Mode().Perm())
	}
	if di, err := os.Stat(filepath.Dir(p)); err != nil || !di.IsDir() {
		t.Errorf("parent dir: %v, %v", di, err)
	}
	if names := dirNames(t, filepath.Dir(p)); len(names) != 1 {
		t.Errorf("leftover files: %v", names)
	}
}

func TestEnforcePreservesModeAndOwner(t *testing.T) {
	root := t.TempDir()
	p := writeHostFile(t, root, UserConfigPath, "ECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=false\n", 0o600)
	before, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	changed, err := Enforce(root)
	if err != nil || !changed {
		t.Fatalf("Enforce = %v, %v; want true, nil", changed, err)
	}
	if got := readFile(t, p); got != "ECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=true\n" {
		t.Errorf("content = %q", got)
	}
	after, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if after.Mode() != before.Mode() {
		t.Errorf("mode = %v, want %v", after.Mode(), before.Mode())
	}
	bs, as := before.Sys().(*syscall.Stat_t), after.Sys().(*syscall.Stat_t)
	if bs.Uid != as.Uid || bs.Gid != as.Gid {
		t.Errorf("owner = %d:%d, want %d:%d", as.Uid, as.Gid, bs.Uid, bs.Gid)
	}
	if bs.Ino == as.Ino {
		t.Errorf("file was modified in place, want an atomic replace")
	}
	if names := dirNames(t, filepath.Dir(p)); len(names) != 1 {
		t.Errorf("leftover files: %v", names)
	}
}

func TestEnforceUnchangedWritesNothing(t *testing.T) {
	root := t.TempDir()
	p := writeHostFile(t, root, UserConfigPath, "ECS_AWSVPC_BLOCK_IMDS=true", 0o640)
	before, _ := os.Stat(p)
	changed, err := Enforce(root)
	if err != nil || changed {
		t.Fatalf("Enforce = %v, %v; want false, nil", changed, err)
	}
	after, _ := os.Stat(p)
	if before.Sys().(*syscall.Stat_t).Ino != after.Sys().(*syscall.Stat_t).Ino || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("file was rewritten although unchanged")
	}
	if got := readFile(t, p); got != "ECS_AWSVPC_BLOCK_IMDS=true" {
		t.Errorf("content = %q", got)
	}
}

// symlinkHostFile makes the in-host path link point at target (in-host
// path or relative), creating link's directory.
func symlinkHostFile(t *testing.T, root, link, target string) string {
	t.Helper()
	full := filepath.Join(root, link)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, full); err != nil {
		t.Fatal(err)
	}
	return full
}

// TestEnforceWritesThroughAbsoluteSymlink is issue 10's case: with
// --host-root T, T/etc/ecs/ecs.config -> /opt/ecs/ecs.config means
// T/opt/ecs/ecs.config, which must be rewritten in place, every line kept,
// and the link left alone.
func TestEnforceWritesThroughAbsoluteSymlink(t *testing.T) {
	root := t.TempDir()
	orig := "ECS_CLUSTER=prod\nECS_ENABLE_TASK_IAM_ROLE=true\n# keep me\nECS_RESERVED_MEMORY=256\n"
	target := writeHostFile(t, root, "/opt/ecs/ecs.config", orig, 0o640)
	if err := os.Chown(target, 1234, 5678); err != nil && os.Geteuid() == 0 {
		t.Fatal(err)
	}
	before, err := os.Stat(target)
	if err != nil {
		t.Fatal(err)
	}
	link := symlinkHostFile(t, root, UserConfigPath, "/opt/ecs/ecs.config")

	// check reads the real file, too.
	in, err := Load(root)
	if err != nil || !in.UserConfig.Present || in.UserConfig.Content != orig {
		t.Fatalf("Load through the link = %+v, %v; want the target's content", in.UserConfig, err)
	}

	changed, err := Enforce(root)
	if err != nil || !changed {
		t.Fatalf("Enforce = %v, %v", changed, err)
	}
	if got, want := readFile(t, target), orig+"ECS_AWSVPC_BLOCK_IMDS=true\n"; got != want {
		t.Errorf("target = %q, want %q", got, want)
	}
	if dest, err := os.Readlink(link); err != nil || dest != "/opt/ecs/ecs.config" {
		t.Errorf("link = %q, %v; want it intact", dest, err)
	}
	after, err := os.Stat(target)
	if err != nil {
		t.Fatal(err)
	}
	if after.Mode() != before.Mode() || after.Sys().(*syscall.Stat_t).Uid != before.Sys().(*syscall.Stat_t).Uid ||
		after.Sys().(*syscall.Stat_t).Gid != before.Sys().(*syscall.Stat_t).Gid {
		t.Errorf("mode/owner changed: %v -> %v", before.Mode(), after.Mode())
	}
	if names := dirNames(t, filepath.Dir(link)); len(names) != 1 {
		t.Errorf("/etc/ecs holds %v, want only the link", names)
	}
	res, err := Evaluate(mustLoad(t, root))
	if err != nil || !res.AWSVPCBlockIMDS {
		t.Errorf("after Enforce: %+v, %v; want true", res, err)
	}
}

func mustLoad(t *testing.T, root string) Inputs {
	t.Helper()
	in, err := Load(root)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func TestEnforceRelativeLinkCannotClimbOut(t *testing.T) {
	outside := t.TempDir()
	victim := writeHostFile(t, outside, "/ecs.config", "ECS_CLUSTER=outside\n", 0o644)
	root := t.TempDir()
	// As many ".." as it takes to leave root on the agent's side: inside the
	// host root they stop at its "/", so this is root's own /<victim path>.
	up := strings.Repeat("../", 20)
	symlinkHostFile(t, root, UserConfigPath, up+strings.TrimPrefix(victim, "/"))
	if _, err := Enforce(root); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, victim); got != "ECS_CLUSTER=outside\n" {
		t.Errorf("file outside the host root modified: %q", got)
	}
	if got := readFile(t, filepath.Join(root, victim)); got != "ECS_AWSVPC_BLOCK_IMDS=true\n" {
		t.Errorf("in-root target = %q", got)
	}
}

func TestEnforceRefusesWhatItCannotRead(t *testing.T) {
	root := t.TempDir()
	big := writeHostFile(t, root, UserConfigPath, "ECS_CLUSTER=prod\n", 0o644)
	if err := os.Truncate(big, MaxEnvFileSize+1); err != nil {
		t.Fatal(err)
	}
	_, err := Enforce(root)
	var we *WriteError
	if !errors.As(err, &we) || !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), UserConfigPath) {
		t.Fatalf("Enforce = %v, want a WriteError for a too-large file naming it", err)
	}
	if fi, _ := os.Stat(big); fi.Size() != MaxEnvFileSize+1 {
		t.Errorf("file changed size: %d", fi.Size())
	}
}

// TestEnforceWriteFailureIsAWriteError makes /etc/ecs unwritable: a
// read-only tmpfs as root (root ignores permissions), mode 0555 otherwise.
func TestEnforceWriteFailureIsAWriteError(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "etc/ecs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
			t.Skipf("cannot mount a tmpfs: %v", err)
		}
		t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	}
	writeHostFile(t, root, UserConfigPath, "ECS_CLUSTER=prod\n", 0o644)
	if os.Geteuid() == 0 {
		if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			t.Fatal(err)
		}
	} else {
		if err := os.Chmod(dir, 0o555); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(dir, 0o755) })
	}
	_, err := Enforce(root)
	var we *WriteError
	if !errors.As(err, &we) || !strings.Contains(err.Error(), UserConfigPath) {
		t.Fatalf("Enforce = %v, want a WriteError naming the file", err)
	}
	if got := readFile(t, filepath.Join(root, UserConfigPath)); got != "ECS_CLUSTER=prod\n" {
		t.Errorf("content = %q", got)
	}
}

func TestEnforceThenEvaluate(t *testing.T) {
	root := t.TempDir()
	writeHostFile(t, root, InstanceConfigPath, "ECS_AWSVPC_BLOCK_IMDS=true\n", 0o644)
	writeHostFile(t, root, UserConfigPath, "ECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=\"true\"\n", 0o644)
	writeHostFile(t, root, JSONConfigPath, `{"AWSVPCBlockInstanceMetdata": false}`, 0o644)

	in, err := Load(root)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := Evaluate(in); err != nil || res.AWSVPCBlockIMDS {
		t.Fatalf("before Enforce: %+v, %v; want false", res, err)
	}
	if changed, err := Enforce(root); err != nil || !changed {
		t.Fatalf("Enforce = %v, %v", changed, err)
	}
	in, err = Load(root)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Evaluate(in)
	if err != nil || !res.AWSVPCBlockIMDS || res.Source != "/etc/ecs/ecs.config:2" {
		t.Fatalf("after Enforce: %+v, %v; want true from /etc/ecs/ecs.config:2", res, err)
	}
	if changed, err := Enforce(root); err != nil || changed {
		t.Errorf("second Enforce = %v, %v; want false, nil", changed, err)
	}
}

func TestLoad(t *testing.T) {
	t.Run("absent files are fine", func(t *testing.T) {
		in, err := Load(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range []File{in.InstanceConfig, in.UserConfig, in.JSONConfig} {
			if f.Present || f.Content != "" {
				t.Errorf("%s: %+v, want absent", f.Path, f)
			}
		}
		if in.InstanceConfig.Path != InstanceConfigPath || in.UserConfig.Path != UserConfigPath || in.JSONConfig.Path != JSONConfigPath {
			t.Errorf("display paths = %+v", in)
		}
	})
	t.Run("reads under the host root with in-host display paths", func(t *testing.T) {
		root := t.TempDir()
		writeHostFile(t, root, InstanceConfigPath, "A=1\n", 0o644)
		writeHostFile(t, root, UserConfigPath, "B=2\n", 0o644)
		writeHostFile(t, root, JSONConfigPath, "{}", 0o644)
		in, err := Load(root)
		if err != nil {
			t.Fatal(err)
		}
		want := Inputs{
			InstanceConfig: File{Path: "/var/lib/ecs/ecs.config", Present: true, Content: "A=1\n"},
			UserConfig:     File{Path: "/etc/ecs/ecs.config", Present: true, Content: "B=2\n"},
			JSONConfig:     File{Path: "/etc/ecs/ecs.config.json", Present: true, Content: "{}"},
		}
		if in != want {
			t.Errorf("Load = %+v\n  want %+v", in, want)
		}
	})
	t.Run("unreadable file is an error", func(t *testing.T) {
		root := t.TempDir()
		writeHostFile(t, root, UserConfigPath, "B=2\n", 0o644)
		// A directory where the file should be fails to read even as root.
		if err := os.MkdirAll(filepath.Join(root, JSONConfigPath), 0o755); err != nil {
			t.Fatal(err)
		}
		in, err := Load(root)
		if err == nil || !strings.Contains(err.Error(), "reading /etc/ecs/ecs.config.json") {
			t.Fatalf("Load error = %v, want one naming /etc/ecs/ecs.config.json", err)
		}
		if !in.UserConfig.Present || in.UserConfig.Content != "B=2\n" {
			t.Errorf("readable file not returned: %+v", in.UserConfig)
		}
	})
}
