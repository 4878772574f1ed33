package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// MockBinary locates ec2-metadata-mock: $IMDSGUARD_E2E_MOCK, then
// .tools/bin under the module root, then PATH.
func MockBinary() (string, error) {
	if p := os.Getenv("IMDSGUARD_E2E_MOCK"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("sandbox: IMDSGUARD_E2E_MOCK: %w", err)
		}
		return p, nil
	}
	if root, err := moduleRoot(); err == nil {
		p := filepath.Join(root, ".tools", "bin", "ec2-metadata-mock")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("ec2-metadata-mock"); err == nil {
		return p, nil
	}
	return "", errors.New("sandbox: ec2-metadata-mock not found (run `make tools`, or set IMDSGUARD_E2E_MOCK)")
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/imdsguard/imdsguard\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("module root not found")
		}
		dir = parent
	}
}

func (s *Sandbox) setupNetwork(ctx context.Context) error {
	h, i := s.HostNS, s.IMDSNS
	steps := [][]string{
		{"ip", "netns", "add", h},
		{"ip", "netns", "add", i},
		{"ip", "-n", h, "link", "set", "lo", "up"},
		{"ip", "-n", i, "link", "set", "lo", "up"},
		// Created inside the host namespace: the names never exist in the
		// root namespace, so concurrent sandboxes cannot collide.
		{"ip", "-n", h, "link", "add", "hv0", "type", "veth", "peer", "name", "iv0", "netns", i},
		{"ip", "-n", h, "addr", "add", HostVethV4 + "/30", "dev", "hv0"},
		{"ip", "-n", h, "addr", "add", HostVethV6 + "/64", "dev", "hv0", "nodad"},
		{"ip", "-n", i, "addr", "add", IMDSVethV4 + "/30", "dev", "iv0"},
		{"ip", "-n", i, "addr", "add", IMDSVethV6 + "/64", "dev", "iv0", "nodad"},
		{"ip", "-n", h, "link", "set", "hv0", "up"},
		{"ip", "-n", i, "link", "set", "iv0", "up"},
		{"ip", "-n", i, "addr", "add", IMDSv4 + "/32", "dev", "lo"},
		{"ip", "-n", i, "addr", "add", IMDSv6 + "/128", "dev", "lo"},
	}
	for _, n := range Neighbours {
		plen := "/32"
		if strings.Contains(n.Addr, ":") {
			plen = "/128"
		}
		steps = append(steps, []string{"ip", "-n", i, "addr", "add", n.Addr + plen, "dev", "lo"})
	}
	steps = append(steps,
		[]string{"ip", "-n", h, "route", "add", "default", "via", IMDSVethV4, "dev", "hv0"},
		[]string{"ip", "-n", h, "-6", "route", "add", "default", "via", IMDSVethV6, "dev", "hv0"},
		// Docker masquerades IPv4 but routes IPv6, so replies need a way back.
		[]string{"ip", "-n", i, "route", "add", "default", "via", HostVethV4, "dev", "iv0"},
		[]string{"ip", "-n", i, "-6", "route", "add", "default", "via", HostVethV6, "dev", "iv0"},
	)
	for _, st := range steps {
		if err := run(ctx, st[0], st[1:]...); err != nil {
			return err
		}
	}
	if _, err := nsRun(ctx, s.HostNetNSPath, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"); err != nil {
		return err
	}
	return nil
}

func (s *Sandbox) startIMDS(ctx context.Context, mock string) error {
	env := append(os.Environ(), "HOME="+s.Dir) // mock reads $HOME/aemm-config.json
	for _, m := range []struct{ name, host, addr string }{
		{"imds-mock-v4", IMDSv4, IMDSv4},
		{"imds-mock-v6", "[" + IMDSv6 + "]", IMDSv6},
	} {
		args := append([]string{"--hostname", m.host, "--port", "80"}, s.opts.MockArgs...)
		p, err := startIn(s.Dir, s.IMDSNetNSPath, m.name, mock, args, env)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.mocks = append(s.mocks, p)
		s.mu.Unlock()
		if err := waitListening(ctx, s.IMDSNetNSPath, m.addr, 80, p); err != nil {
			return fmt.Errorf("%s: %w\n%s", m.name, err, p.Log())
		}
	}
	for _, n := range Neighbours {
		l, err := listenIn(s.IMDSNetNSPath, net.JoinHostPort(n.Addr, strconv.Itoa(n.Port)))
		if err != nil {
			return fmt.Errorf("neighbour %s: %w", n.Name, err)
		}
		s.mu.Lock()
		s.listeners = append(s.listeners, l)
		s.mu.Unlock()
		go serveLine(l, n.Name+"\n")
	}
	return nil
}

func serveLine(l net.Listener, line string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = io.WriteString(c, line)
		}()
	}
}

// waitListening dials addr:port inside nsPath until it accepts, p exits,
// or 15s pass.
func waitListening(ctx context.Context, nsPath, addr string, port int, p *Process) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for {
		dctx, dcancel := context.WithTimeout(ctx, time.Second)
		c, err := dialIn(dctx, nsPath, addr, port)
		dcancel()
		if err == nil {
			c.Close()
			return nil
		}
		if p != nil {
			if done, werr := p.Exited(); done {
				return fmt.Errorf("exited: %v", werr)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not listening on %s:%d: %w (last: %v)", addr, port, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
