package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/agent"
	"github.com/imdsguard/imdsguard/e2e/sandbox"
	"github.com/imdsguard/imdsguard/status"
)

// selfExemptImage builds an image whose LABEL claims the exemption, the way
// anyone who can push an image could.
func selfExemptImage(t *testing.T, s *sandbox.Sandbox) string {
	t.Helper()
	const img = "selfexempt:1"
	if _, err := s.RunContainer("imgbase"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Docker("commit", "--change", "LABEL "+agent.ExampleExemptLabel, "imgbase", img); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Docker("rm", "-f", "imgbase"); err != nil {
		t.Fatal(err)
	}
	return img
}

// runImage starts a container from img (RunContainer always uses busybox).
func runImage(t *testing.T, s *sandbox.Sandbox, name, img string, args ...string) {
	t.Helper()
	a := append([]string{"run", "-d", "--init", "--name", name}, args...)
	if _, err := s.Docker(append(a, img, "sleep", "86400")...); err != nil {
		t.Fatal(err)
	}
}

// TestExemptions: with default flags nothing is exempt, not even a
// container whose image labels itself exempt. With an exemption configured,
// the exempt container reads IMDS; the self-labelled image still does not;
// a NET_ADMIN neighbour that takes the exempt container's addresses (and
// makes the host's neighbour table point at itself) does not; and a
// container that gets the addresses after the exempt one stops is blocked
// at once.
func TestExemptions(t *testing.T) { forEachDocker(t, testExemptions) }

func testExemptions(t *testing.T, opts sandbox.Options) {
	e := newEnv(t, opts)
	s := e.s
	if err := s.CreateNetwork("exnet", "172.31.5.0/24", "fd00:ec2:d5::/64"); err != nil {
		t.Fatal(err)
	}
	ip4, ip6 := "172.31.5.10", "fd00:ec2:d5::10"
	gw4, gw6 := "172.31.5.1", "fd00:ec2:d5::1"
	img := selfExemptImage(t, s)
	if _, err := s.RunContainer("cwagent", "--network", "exnet", "--ip", ip4, "--ip6", ip6, "--label", agent.ExampleExemptLabel); err != nil {
		t.Fatal(err)
	}
	runImage(t, s, "vain", img, "--network", "exnet")
	if _, err := s.RunContainer("plain", "--network", "exnet"); err != nil {
		t.Fatal(err)
	}
	xray := append([]string{"--network", "exnet"}, ecsLabels("arn:aws:ecs:us-east-1:123456789012:task/e2e/xray", "xray", "xray-daemon")...)
	if _, err := s.RunContainer("xray", xray...); err != nil {
		t.Fatal(err)
	}

	// Default flags: no exemption at all.
	e.startAgent(t)
	if st := e.waitProtected(t); len(st.Exemptions) != 0 {
		t.Fatalf("default flags granted exemptions: %+v", st.Exemptions)
	}
	e.assertBlocked(t, "cwagent", "vain", "xray")
	if err := e.agent.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}

	e.startAgent(t, "--exempt-label", agent.ExampleExemptLabel, "--exempt-task-family", "xray")
	var st *status.Status
	waitFor(t, "two exemptions in force", 30*time.Second, func() bool {
		s, err := status.QueryStatus(context.Background(), e.socket)
		if err != nil || s.Verdict != status.VerdictProtected {
			return false
		}
		st = s
		n := 0
		for _, x := range s.Exemptions {
			if x.Applied {
				n++
			}
		}
		return n == 2
	})
	for _, x := range st.Exemptions {
		switch x.Name {
		case "cwagent", "xray":
			if !x.Applied || len(x.Ports) != 1 || !strings.HasPrefix(x.Ports[0], "veth") {
				t.Errorf("exemption %+v: want applied on one veth", x)
			}
		case "vain":
			if x.Applied || !strings.Contains(x.Note, "image carries the same label") {
				t.Errorf("an image's own label exempted its container: %+v", x)
			}
		default:
			t.Errorf("unexpected exemption %+v", x)
		}
	}
	for _, c := range []string{"cwagent", "xray"} {
		if body, err := s.ReadIMDS(c); err != nil || body != sandbox.InstanceID {
			t.Fatalf("exempt %s must read IMDS: %q %v", c, body, err)
		}
	}
	if body, err := s.ReadIMDSv6("cwagent"); err != nil || body != sandbox.InstanceID {
		t.Fatalf("exempt cwagent must read IMDS over IPv6: %q %v", body, err)
	}
	e.assertBlocked(t, "plain", "vain")
	out, _ := e.cli(t, "status")
	t.Logf("imdsguard status:\n%s", out)
	if !strings.Contains(out, "exemption: cwagent exempt (label "+agent.ExampleExemptLabel+") for "+ip4+", "+ip6) {
		t.Fatalf("status does not list the exemption:\n%s", out)
	}
	if log := e.agent.Log(); !strings.Contains(log, "exemption granted") || !strings.Contains(log, `"container":"cwagent"`) {
		t.Fatalf("no log line for the granted exemption:\n%s", tailLines(log, 20))
	}

	// A neighbour with NET_ADMIN (and a writable /proc/sys, to skip IPv6
	// duplicate address detection) takes both of cwagent's addresses and
	// makes the host's neighbour entries point at itself: IMDS's answer
	// would come back to it. Only the bridge port tells it apart.
	if _, err := s.RunContainer("thief", "--network", "exnet", "--cap-add", "NET_ADMIN", "--security-opt", "systempaths=unconfined"); err != nil {
		t.Fatal(err)
	}
	mac, err := s.Docker("inspect", "--format", `{{(index .NetworkSettings.Networks "exnet").MacAddress}}`, "thief")
	if err != nil {
		t.Fatal(err)
	}
	mac = strings.TrimSpace(mac)
	take := fmt.Sprintf(`set -e
ip -4 addr flush dev eth0
ip addr add %[1]s/24 dev eth0
ip route add default via %[2]s
echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad
ip -6 addr flush dev eth0 scope global
ip -6 addr add %[3]s/64 dev eth0
ip -6 route replace default via %[4]s dev eth0`, ip4, gw4, ip6, gw6)
	if out, err := s.Docker("exec", "thief", "sh", "-c", take); err != nil {
		t.Fatalf("taking the addresses: %v\n%s", err, out)
	}
	// A neighbour solicitation carries the sender's link-layer address and
	// overrides the host's entry, so the thief forgets the gateway first.
	announce := fmt.Sprintf(`arping -U -c 2 -I eth0 -s %[1]s %[1]s >/dev/null 2>&1; ip -6 neigh flush dev eth0; ping -c 1 -W 1 -I %[2]s %[3]s >/dev/null 2>&1; true`, ip4, ip6, gw6)
	for _, a := range []string{ip4, ip6} {
		var n string
		for deadline := time.Now().Add(20 * time.Second); !strings.Contains(strings.ToLower(n), mac); {
			if time.Now().After(deadline) {
				addrs, _ := s.Docker("exec", "thief", "ip", "addr")
				t.Fatalf("the host's neighbour entry for %s does not point at the neighbour (%s): %q\nthief:\n%s", a, mac, n, addrs)
			}
			_, _ = s.Docker("exec", "thief", "sh", "-c", announce)
			n, _ = s.HostRun("ip", "neigh", "show", "to", a)
		}
	}
	for _, p := range []struct{ fam, addr string }{{"IPv4", sandbox.IMDSv4}, {"IPv6", sandbox.IMDSv6}} {
		if err := s.Probe("thief", p.addr, 80, 3*time.Second); err == nil {
			t.Errorf("a neighbour on the exempt container's %s address reaches IMDS", p.fam)
		}
	}
	if _, err := s.Docker("rm", "-f", "thief"); err != nil {
		t.Fatal(err)
	}

	// Stop the labeled container and start another with its addresses,
	// straight away: the exemption must be gone before the new one can use
	// them.
	if _, err := s.Docker("rm", "-f", "cwagent"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RunContainer("reuse", "--network", "exnet", "--ip", ip4, "--ip6", ip6); err != nil {
		t.Fatal(err)
	}
	if body, err := s.ReadIMDS("reuse"); err == nil {
		t.Fatalf("a container on a dead exempt container's address reads IMDS: %q", body)
	}
	e.assertBlocked(t, "reuse")
	for _, bin := range []string{"iptables-save", "ip6tables-save"} {
		rules, _ := s.HostRun(bin, "-t", "filter")
		if strings.Contains(rules, ip4+"/32") || strings.Contains(rules, ip6+"/128") {
			t.Fatalf("%s still exempts the address:\n%s", bin, rules)
		}
	}
	waitFor(t, "status without the exemption", 10*time.Second, func() bool {
		st, err := status.QueryStatus(context.Background(), e.socket)
		if err != nil {
			return false
		}
		var applied []string
		for _, x := range st.Exemptions {
			if x.Applied {
				applied = append(applied, x.Name)
			}
		}
		return len(applied) == 1 && applied[0] == "xray"
	})
	if log := e.agent.Log(); !strings.Contains(log, "exemption withdrawn") {
		t.Fatalf("no log line for the withdrawn exemption:\n%s", tailLines(log, 20))
	}
	if st := e.status(t); st.Repairs != 0 {
		t.Fatalf("exemption changes counted as %d repairs", st.Repairs)
	}
}

// TestCheckAgreesWithDaemon: `imdsguard check` with no flags judges the
// packet, not its own defaults, so it says what a daemon running with other
// settings says, with the same exit code.
func TestCheckAgreesWithDaemon(t *testing.T) {
	e := newEnv(t, sandbox.Options{})
	s := e.s
	if err := s.CreateNetwork("cknet", "172.31.6.0/24", "fd00:ec2:d6::/64"); err != nil {
		t.Fatal(err)
	}
	xray := append([]string{"--network", "cknet"}, ecsLabels("arn:aws:ecs:us-east-1:123456789012:task/e2e/xray", "xray", "xray-daemon")...)
	if _, err := s.RunContainer("xray", xray...); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RunContainer("app", "--network", "cknet"); err != nil {
		t.Fatal(err)
	}
	for _, daemon := range [][]string{{"--action", "reject"}, {"--exempt-task-family", "xray"}} {
		t.Run(strings.Join(daemon, "="), func(t *testing.T) {
			e.startAgent(t, daemon...)
			defer func() {
				if err := e.agent.Stop(10 * time.Second); err != nil {
					t.Error(err)
				}
			}()
			want := e.waitProtected(t)
			if daemon[0] == "--exempt-task-family" {
				waitFor(t, "the exemption", 30*time.Second, func() bool {
					st, err := status.QueryStatus(context.Background(), e.socket)
					want = st
					return err == nil && len(st.Exemptions) == 1 && st.Exemptions[0].Applied && st.Verdict == status.VerdictProtected
				})
				if body, err := s.ReadIMDS("xray"); err != nil || body != sandbox.InstanceID {
					t.Fatalf("exempt xray must read IMDS: %q %v", body, err)
				}
			}
			out, code := e.cli(t, "check", "--json")
			var got status.Status
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("check output: %v\n%s", err, out)
			}
			t.Logf("daemon %v: %s; check: %s (exit %d) %v; ipv4 probe: %s", daemon, want.Verdict, got.Verdict, code, got.Reasons, got.Firewall.IPv4.Probe)
			if got.Verdict != want.Verdict || code != want.ExitCode() {
				t.Fatalf("check says %s (exit %d), the daemon %s (exit %d): %v", got.Verdict, code, want.Verdict, want.ExitCode(), got.Reasons)
			}
			// And both are right: app is blocked (reset, with reject).
			if daemon[0] != "--action" {
				e.assertBlocked(t, "app")
				return
			}
			for _, addr := range []string{sandbox.IMDSv4, sandbox.IMDSv6} {
				if err := s.Probe("app", addr, 80, 3*time.Second); !errors.Is(err, sandbox.ErrRefused) {
					t.Errorf("app -> %s: want a reset, got %v", addr, err)
				}
			}
		})
	}
}
