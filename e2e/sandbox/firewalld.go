package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The sandbox's private system bus and firewalld (Options.Firewalld).
//
// dbus-daemon listens on a socket in the sandbox directory, so only the
// sandbox's processes (which get DBUS_SYSTEM_BUS_ADDRESS from Env) see it.
// firewalld (the machine's Debian package) runs in the host network
// namespace and in a private mount namespace in which the sandbox's own
// directory is mounted over /etc/firewalld (Docker writes its `docker` zone
// there) and a tmpfs over /run (/run/firewalld): never the machine's.
// dockerd starts after it, so it registers with firewalld as on a
// firewalld host.

func (s *Sandbox) busSocket() string { return filepath.Join(s.Dir, "system_bus.sock") }

// busAddress is DBUS_SYSTEM_BUS_ADDRESS for everything the sandbox starts.
// Without Firewalld it names a socket nobody listens on: dockerd must never
// reach the machine's system bus, or it would program the machine's
// firewalld.
func (s *Sandbox) busAddress() string { return "unix:path=" + s.busSocket() }

const busConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`

func (s *Sandbox) startFirewalld(ctx context.Context) error {
	if s.dbus == nil {
		cfg := filepath.Join(s.Dir, "system_bus.conf")
		if err := os.WriteFile(cfg, []byte(fmt.Sprintf(busConfig, s.busSocket())), 0o644); err != nil {
			return err
		}
		p, err := startIn(s.Dir, s.HostNetNSPath, "dbus-daemon", "dbus-daemon", []string{"--config-file=" + cfg, "--nofork", "--nopidfile", "--nosyslog"}, s.Env())
		if err != nil {
			return err
		}
		s.dbus = p
		if err := waitFile(ctx, s.busSocket(), p); err != nil {
			return fmt.Errorf("sandbox: dbus-daemon: %w\n%s", err, tail(p.Log(), 20))
		}
	}
	etc := filepath.Join(s.Dir, "firewalld-etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return err
	}
	backend := s.opts.FirewalldBackend
	if backend == "" {
		backend = "nftables"
	}
	conf := "DefaultZone=public\nCleanupOnExit=yes\nFirewallBackend=" + backend + "\nFlushAllOnReload=yes\nLogDenied=off\n"
	if err := os.WriteFile(filepath.Join(etc, "firewalld.conf"), []byte(conf), 0o644); err != nil {
		return err
	}
	if _, err := os.Stat("/etc/firewalld"); err != nil {
		return fmt.Errorf("sandbox: firewalld not installed (run `make tools`): %w", err)
	}
	// With BackendLegacy firewalld must write iptables-legacy too, as on a
	// legacy host; its command paths are fixed (/usr/sbin/iptables), so its
	// own mount namespace gets an /etc/alternatives pointing them there.
	alt := ""
	if s.Backend == BackendLegacy {
		var err error
		if alt, err = s.legacyAlternatives(); err != nil {
			return err
		}
	}
	start := time.Now()
	script := `set -e
mount --bind "$1" /etc/firewalld
if [ -n "$2" ]; then mount --bind "$2" /etc/alternatives; fi
mount -t tmpfs -o mode=755 tmpfs /run
shift 2
exec "$@"`
	argv := []string{"nsenter", "--net=" + s.HostNetNSPath, "--", "unshare", "-m", "--propagation", "private", "--",
		"/bin/sh", "-c", script, "firewalld-ns", etc, alt,
		"firewalld", "--nofork", "--nopid", "--log-target", "console"}
	p, err := startArgv(s.Dir, "firewalld", argv, s.Env())
	if err != nil {
		return err
	}
	s.firewalld = p
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		if out, err := s.firewallCmd(ctx, "--state"); err == nil && strings.TrimSpace(out) == "running" {
			break
		}
		if done, werr := p.Exited(); done {
			return fmt.Errorf("sandbox: firewalld exited: %v\n%s", werr, tail(p.Log(), 30))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sandbox: firewalld not running: %w\n%s", ctx.Err(), tail(p.Log(), 30))
		case <-time.After(200 * time.Millisecond):
		}
	}
	s.logf("sandbox %s: firewalld (%s backend, pid %d) up in %v", s.ID, backend, p.Pid(), time.Since(start).Round(time.Millisecond))
	return nil
}

// legacyAlternatives copies the machine's /etc/alternatives links into the
// sandbox with the iptables ones (legacyTools) pointing at the -legacy
// binaries, for firewalld's mount namespace only.
func (s *Sandbox) legacyAlternatives() (string, error) {
	dir := filepath.Join(s.Dir, "alternatives")
	if _, err := os.Stat(dir); err == nil {
		return dir, nil // a restart: made already
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", err
	}
	entries, err := os.ReadDir("/etc/alternatives")
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/etc/alternatives", e.Name()))
		if err != nil {
			continue // not a link (README)
		}
		if slices.Contains(legacyTools, e.Name()) {
			target = filepath.Join(s.legacyDir, e.Name())
		}
		if err := os.Symlink(target, filepath.Join(dir, e.Name())); err != nil {
			return "", err
		}
	}
	return dir, nil
}

func waitFile(ctx context.Context, path string, p *Process) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if done, werr := p.Exited(); done {
			return fmt.Errorf("exited: %v", werr)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no %s: %w", path, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// FirewallCmd runs the machine's firewall-cmd against the sandbox's
// firewalld (60s limit) and returns its output.
func (s *Sandbox) FirewallCmd(args ...string) (string, error) {
	return s.firewallCmd(context.Background(), args...)
}

func (s *Sandbox) firewallCmd(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + s.HostNetNSPath, "--", "firewall-cmd"}, args...)...)
	cmd.Env = s.Env()
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("firewall-cmd %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// RestartFirewalld stops firewalld (SIGTERM: it removes its rules and
// leaves the bus, which Docker sees as NameOwnerChanged) and starts it
// again; Docker then re-creates its chains.
func (s *Sandbox) RestartFirewalld(ctx context.Context) error {
	if s.firewalld == nil {
		return errors.New("sandbox: no firewalld (Options.Firewalld)")
	}
	if err := s.stopFirewalld(); err != nil {
		return err
	}
	return s.startFirewalld(ctx)
}

// FirewalldLog is firewalld's output so far.
func (s *Sandbox) FirewalldLog() string { return readFileString(filepath.Join(s.Dir, "firewalld.log")) }

func (s *Sandbox) stopFirewalld() error {
	p := s.firewalld
	s.firewalld = nil
	if p == nil {
		return nil
	}
	return p.Stop(20 * time.Second)
}

func (s *Sandbox) stopBus() error {
	err := s.stopFirewalld()
	if s.dbus != nil {
		err = errors.Join(err, s.dbus.Stop(5*time.Second))
		s.dbus = nil
	}
	return err
}

// FirewalldBackendName is the FirewallBackend the sandbox's firewalld was
// given ("" without Options.Firewalld).
func (s *Sandbox) FirewalldBackendName() string {
	if !s.opts.Firewalld {
		return ""
	}
	if s.opts.FirewalldBackend == "" {
		return "nftables"
	}
	return s.opts.FirewalldBackend
}
