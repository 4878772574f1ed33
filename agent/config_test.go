package agent

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/firewall"
)

func finish(t *testing.T, args []string, env map[string]string) (Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var c Config
	c.Bind(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	err := c.Finish(fs, func(k string) string { return env[k] })
	return c, err
}

func writeSettings(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "imdsguard.env")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSettingsPrecedence: flags over environment over file over defaults.
func TestSettingsPrecedence(t *testing.T) {
	p := writeSettings(t, `# the unit's file
IMDSGUARD_ACTION=reject
IMDSGUARD_RESYNC_INTERVAL = "2s"
IMDSGUARD_LOG_LEVEL='warn'
  ; a comment
IMDSGUARD_EXEMPT_TASK_FAMILY=a,\
b
IMDSGUARD_METRICS_ADDR=
DOCKER_HOST=unix:///run/other.sock
OPTIONS=--whatever
`)
	c, err := finish(t, []string{"--config", p, "--log-level=error"}, map[string]string{"IMDSGUARD_RESYNC_INTERVAL": "3s"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Action != firewall.ActionReject || c.MetricsAddr != "" || strings.Join(c.ExemptTaskFamilies, ",") != "a,b" {
		t.Errorf("file not applied: %+v", c)
	}
	if c.ResyncInterval != 3*time.Second {
		t.Errorf("environment must win over the file: %v", c.ResyncInterval)
	}
	if c.LogLevel != "error" {
		t.Errorf("flags must win over everything: %q", c.LogLevel)
	}
	if c.DockerHost != "unix:///run/other.sock" {
		t.Errorf("DOCKER_HOST from the file: %q", c.DockerHost)
	}
	if c.IPv6 != true || c.ECSConfigMode != ECSModeCheck {
		t.Errorf("defaults lost: %+v", c)
	}
	// IMDSGUARD_CONFIG names the file too.
	if c, err := finish(t, nil, map[string]string{"IMDSGUARD_CONFIG": p}); err != nil || c.Action != firewall.ActionReject || c.ConfigFile != p {
		t.Errorf("IMDSGUARD_CONFIG: %+v, %v", c, err)
	}
}

func TestSettingsFileErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, content, want string
	}{
		{"no equals", "IMDSGUARD_ACTION reject\n", ":1: want KEY=VALUE"},
		{"bad key", "\n-X=1\n", ":2: want KEY=VALUE"},
		{"unterminated quote", "IMDSGUARD_ACTION=\"drop\n", ":1: IMDSGUARD_ACTION: unterminated quote"},
		{"unknown setting", "IMDSGUARD_ACTON=drop\n", ":1: unknown setting IMDSGUARD_ACTON"},
		{"bad value", "IMDSGUARD_ACTION=allow\n", `IMDSGUARD_ACTION="allow" at `},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeSettings(t, tc.content)
			_, err := finish(t, []string{"--config", p}, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
				t.Fatalf("err = %v, want %q naming %s", err, tc.want, p)
			}
		})
	}
	t.Run("named file missing", func(t *testing.T) {
		if _, err := finish(t, []string{"--config", filepath.Join(dir, "nope")}, nil); err == nil || !strings.Contains(err.Error(), "nope") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("a directory", func(t *testing.T) {
		if _, err := finish(t, []string{"--config", dir}, nil); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestDefaultSettingsFileMayBeMissing(t *testing.T) {
	if _, err := os.Stat(DefaultConfigFile); err == nil {
		t.Skipf("%s exists on this machine", DefaultConfigFile)
	}
	c, err := finish(t, nil, nil)
	if err != nil || c.ConfigFile != DefaultConfigFile || c.Action != firewall.ActionDrop {
		t.Fatalf("%+v, %v", c, err)
	}
}

// TestPackagedSettingsFileParses: every line of the shipped file is valid
// and, all commented out, changes nothing.
func TestPackagedSettingsFileParses(t *testing.T) {
	p := filepath.Join("..", "packaging", "imdsguard.env")
	c, err := finish(t, []string{"--config", p}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	var uncommented []string
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "#IMDSGUARD_"); ok {
			uncommented = append(uncommented, "IMDSGUARD_"+v)
		}
	}
	all := writeSettings(t, strings.Join(uncommented, "\n"))
	d, err := finish(t, []string{"--config", all}, nil)
	if err != nil {
		t.Fatalf("the file's defaults do not parse: %v", err)
	}
	d.ConfigFile, c.ConfigFile = "", ""
	if !reflect.DeepEqual(d, c) {
		t.Errorf("the file's commented defaults differ from the built-in ones:\n%+v\n%+v", d, c)
	}
}
