package e2e

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/e2e/sandbox"
)

// TestBaseline proves the "before" picture: with no agent, containers on
// the default bridge and on a user-defined IPv6 network can read IMDS.
func TestBaseline(t *testing.T) { forEachBackend(t, testBaseline) }

func testBaseline(t *testing.T, opts sandbox.Options) {
	backend := opts.Backend
	start := time.Now()
	s := sandbox.NewT(t, opts) // skips unless root
	bringUp := time.Since(start)

	if _, err := s.RunContainer("onbridge"); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateNetwork("v6net", "172.30.0.0/24", "fd00:ec2:d1::/64"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RunContainer("onv6net", "--network", "v6net"); err != nil {
		t.Fatal(err)
	}

	for _, c := range []string{"onbridge", "onv6net"} {
		body, err := s.ReadIMDS(c)
		if err != nil || body != sandbox.InstanceID {
			t.Errorf("%s: IMDS over IPv4: body %q, err %v", c, body, err)
		}
		if err := s.Probe(c, sandbox.IMDSv6, 80, 3*time.Second); err != nil {
			t.Errorf("%s: IMDS over IPv6: %v", c, err)
		}
		if body, err := s.ReadIMDSv6(c); err != nil || body != sandbox.InstanceID {
			t.Errorf("%s: read IMDS over IPv6: body %q, err %v", c, body, err)
		}
		for _, n := range sandbox.Neighbours {
			if err := s.Probe(c, n.Addr, n.Port, 3*time.Second); err != nil {
				t.Errorf("%s: neighbour %s: %v", c, n.Name, err)
			}
		}
		// A closed port must be told apart from a reachable one.
		if err := s.Probe(c, sandbox.IMDSv4, 81, 3*time.Second); !errors.Is(err, sandbox.ErrRefused) {
			t.Errorf("%s: probe of closed port: want refused, got %v", c, err)
		}
	}
	for _, n := range sandbox.Neighbours {
		line, err := s.ReadFromHost(n.Addr, n.Port, 3*time.Second)
		if err != nil || line != n.Name {
			t.Errorf("host: neighbour %s answered %q, %v", n.Name, line, err)
		}
	}
	if err := s.ProbeFromHost(sandbox.IMDSv4, 80, 3*time.Second); err != nil {
		t.Errorf("host: IMDS v4: %v", err)
	}
	if err := s.ProbeFromHost(sandbox.IMDSv6, 80, 3*time.Second); err != nil {
		t.Errorf("host: IMDS v6: %v", err)
	}

	// Docker's DOCKER-USER chain exists in the selected backend only.
	rules, err := s.HostRun("iptables", "-S")
	if err != nil || !strings.Contains(rules, "-N DOCKER-USER") {
		t.Errorf("iptables -S in host ns lacks DOCKER-USER (%v):\n%s", err, rules)
	}
	legacy, _ := s.HostRun("iptables-legacy-save")
	nft, _ := s.HostRun("iptables-nft-save")
	want, other := nft, legacy
	if backend == sandbox.BackendLegacy {
		want, other = legacy, nft
	}
	if !strings.Contains(want, ":DOCKER-USER") {
		t.Errorf("%s backend: DOCKER-USER missing from its save output:\n%s", backend, want)
	}
	if strings.Contains(other, "DOCKER-USER") {
		t.Errorf("%s backend: DOCKER-USER also in the other backend:\n%s", backend, other)
	}

	pid, dir, nss := s.DockerdPid(), s.Dir, []string{s.HostNetNSPath, s.IMDSNetNSPath}
	start = time.Now()
	if err := s.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	teardown := time.Since(start)
	t.Logf("%s: bring-up %v, teardown %v", backend, bringUp.Round(time.Millisecond), teardown.Round(time.Millisecond))

	for _, p := range nss {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("namespace %s still exists (%v)", p, err)
		}
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); pid == 0 || !os.IsNotExist(err) {
		t.Errorf("dockerd pid %d still exists", pid)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("sandbox dir %s still exists", dir)
	}
	if left := leftovers(dir); left != "" {
		t.Errorf("left behind:\n%s", left)
	}
}
