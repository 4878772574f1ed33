package ecsconfig

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
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

func TestEnforceRefusesSymlink(t *testing.T) {
	root := t.TempDir()
	target := writeHostFile(t, root, "/srv/ecs.config", "ECS_CLUSTER=prod\n", 0o644)
	link := filepath.Join(root, UserConfigPath)
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	_, err := Enforce(root)
	if err == nil || !strings.Contains(err.Error(), "symlink") || !strings.Contains(err.Error(), "/etc/ecs/ecs.config") {
		t.Fatalf("Enforce error = %v, want a symlink refusal naming the file", err)
	}
	if got := readFile(t, target); got != "ECS_CLUSTER=prod\n" {
		t.Errorf("target modified: %q", got)
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
