package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Probe errors, matched with errors.Is.
var (
	ErrRefused     = errors.New("connection refused")
	ErrTimeout     = errors.New("connection timed out")
	ErrUnreachable = errors.New("unreachable")
)

// Probe opens a TCP connection from inside container to addr:port
// (addr an IP literal, IPv6 without brackets) with busybox nc. It returns
// nil when the connection is established, or an error wrapping ErrRefused,
// ErrTimeout or ErrUnreachable when it can tell which.
func (s *Sandbox) Probe(container, addr string, port int, timeout time.Duration) error {
	secs := int((timeout + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	addr = strings.Trim(addr, "[]")
	ctx, cancel := context.WithTimeout(context.Background(), timeout+10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.dockerCLI, "exec", container, "nc", "-w", strconv.Itoa(secs), addr, strconv.Itoa(port))
	cmd.Env = s.Env()
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	return fmt.Errorf("probe %s -> [%s]:%d: %w", container, addr, port, classify(string(out)+" "+err.Error(), ctx.Err() != nil))
}

func classify(msg string, timedOut bool) error {
	l := strings.ToLower(msg)
	switch {
	case strings.Contains(l, "refused"):
		return fmt.Errorf("%w: %s", ErrRefused, strings.TrimSpace(msg))
	case timedOut || strings.Contains(l, "timed out") || strings.Contains(l, "timeout"):
		return fmt.Errorf("%w: %s", ErrTimeout, strings.TrimSpace(msg))
	case strings.Contains(l, "unreachable") || strings.Contains(l, "no route"):
		return fmt.Errorf("%w: %s", ErrUnreachable, strings.TrimSpace(msg))
	}
	return errors.New(strings.TrimSpace(msg))
}

// HTTPGet sends an HTTP/1.0 GET for path to addr:port from inside
// container (busybox nc) and returns the body of a 200 answer.
func (s *Sandbox) HTTPGet(container, addr string, port int, path string) (string, error) {
	addr = strings.Trim(addr, "[]")
	host := addr
	if strings.Contains(addr, ":") {
		host = "[" + addr + "]"
	}
	req := fmt.Sprintf(`GET %s HTTP/1.0\r\nHost: %s\r\n\r\n`, path, host)
	script := fmt.Sprintf(`printf '%s' | nc -w 3 %s %d`, req, addr, port)
	out, err := s.dockerCtx(context.Background(), 15*time.Second, "exec", container, "sh", "-c", script)
	if err != nil {
		return "", classify(err.Error(), false)
	}
	head, body, ok := strings.Cut(out, "\r\n\r\n")
	if !ok {
		return "", fmt.Errorf("GET %s from %s: malformed answer %q", path, container, out)
	}
	if status, _, _ := strings.Cut(head, "\r\n"); !strings.Contains(status, " 200 ") {
		return "", fmt.Errorf("GET %s from %s: %s", path, container, status)
	}
	return body, nil
}

// ReadIMDS reads instance-id from IMDS over IPv4 inside container, as an
// SDK in a task would.
func (s *Sandbox) ReadIMDS(container string) (string, error) {
	return s.HTTPGet(container, IMDSv4, 80, "/latest/meta-data/instance-id")
}

// ReadIMDSv6 is ReadIMDS over IPv6 (fd00:ec2::254).
func (s *Sandbox) ReadIMDSv6(container string) (string, error) {
	return s.HTTPGet(container, IMDSv6, 80, "/latest/meta-data/instance-id")
}
