package firewall

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestExemptRulesComeFirstSorted(t *testing.T) {
	s := Spec{Action: ActionDrop, Exempt: []Exemption{
		{Container: "c3", Port: "veth3", Addrs: addrs("172.17.0.3", "172.17.0.3", "0.0.0.0", "127.0.0.1", "fd00:ec2:d0c::10", "::")},
		{Container: "c2", Port: "veth2", Addrs: addrs("::ffff:172.17.0.2", "fd00:ec2:d0c::2", "fe80::1%eth0")},
		{Container: "c10", Port: "veth10", Addrs: addrs("172.17.0.10")},
		{Container: "noport", Addrs: addrs("172.17.0.9")},
		{Container: "wildcard", Port: "veth+", Addrs: addrs("172.17.0.8")},
	}}
	want4 := []string{
		"-A IMDS-GUARD -s 172.17.0.10/32 -d 169.254.169.254/32 -m mark --mark 0x100000/0x100000 -j ACCEPT",
		"-A IMDS-GUARD -s 172.17.0.10/32 -d 169.254.169.254/32 -m physdev --physdev-in veth10 -j ACCEPT",
		"-A IMDS-GUARD -s 172.17.0.2/32 -d 169.254.169.254/32 -m mark --mark 0x100000/0x100000 -j ACCEPT",
		"-A IMDS-GUARD -s 172.17.0.2/32 -d 169.254.169.254/32 -m physdev --physdev-in veth2 -j ACCEPT",
		"-A IMDS-GUARD -s 172.17.0.3/32 -d 169.254.169.254/32 -m mark --mark 0x100000/0x100000 -j ACCEPT",
		"-A IMDS-GUARD -s 172.17.0.3/32 -d 169.254.169.254/32 -m physdev --physdev-in veth3 -j ACCEPT",
		"-A IMDS-GUARD -d 169.254.169.254/32 -j DROP",
	}
	if got := s.Rules(IPv4); !slices.Equal(got, want4) {
		t.Errorf("ipv4:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want4, "\n"))
	}
	want6 := []string{
		"-A IMDS-GUARD -s fd00:ec2:d0c::10/128 -d fd00:ec2::254/128 -m mark --mark 0x100000/0x100000 -j ACCEPT",
		"-A IMDS-GUARD -s fd00:ec2:d0c::10/128 -d fd00:ec2::254/128 -m physdev --physdev-in veth3 -j ACCEPT",
		"-A IMDS-GUARD -s fd00:ec2:d0c::2/128 -d fd00:ec2::254/128 -m mark --mark 0x100000/0x100000 -j ACCEPT",
		"-A IMDS-GUARD -s fd00:ec2:d0c::2/128 -d fd00:ec2::254/128 -m physdev --physdev-in veth2 -j ACCEPT",
		"-A IMDS-GUARD -d fd00:ec2::254/128 -j DROP",
	}
	if got := s.Rules(IPv6); !slices.Equal(got, want6) {
		t.Errorf("ipv6:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want6, "\n"))
	}
}

func TestHostRules(t *testing.T) {
	s := Spec{Action: ActionReject, Host: &HostSpec{Cgroups: []string{
		"/system.slice/docker-ab12.scope", "/", "", "relative", "/a b", `/x"y`, "/ecstasks-1.slice/docker-cd34.scope",
		"/system.slice/docker-ab12.scope", "/a/../b",
	}}}
	want := []string{
		`-A IMDS-GUARD-HOST -d 169.254.169.254/32 -p tcp -m cgroup --path "/ecstasks-1.slice/docker-cd34.scope" -j REJECT --reject-with tcp-reset`,
		`-A IMDS-GUARD-HOST -d 169.254.169.254/32 -m cgroup --path "/ecstasks-1.slice/docker-cd34.scope" -j REJECT --reject-with icmp-port-unreachable`,
		`-A IMDS-GUARD-HOST -d 169.254.169.254/32 -p tcp -m cgroup --path "/system.slice/docker-ab12.scope" -j REJECT --reject-with tcp-reset`,
		`-A IMDS-GUARD-HOST -d 169.254.169.254/32 -m cgroup --path "/system.slice/docker-ab12.scope" -j REJECT --reject-with icmp-port-unreachable`,
	}
	if got := s.HostRules(IPv4); !slices.Equal(got, want) {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := (Spec{Action: ActionDrop}).HostRules(IPv4); got != nil {
		t.Errorf("no Host: %q", got)
	}
	want6 := `*filter
:IMDS-GUARD-HOST - [0:0]
-A IMDS-GUARD-HOST -d fd00:ec2::254/128 -m cgroup --path "/p" -j DROP
COMMIT
`
	if got := string(Spec{Action: ActionDrop, Host: &HostSpec{Cgroups: []string{"/p"}}}.HostRestorePayload(IPv6)); got != want6 {
		t.Errorf("payload %q, want %q", got, want6)
	}
}

// TestExemptionChangeIsAnUpdate: a new spec is applied atomically and is not
// drift; an edit by someone else still is.
func TestExemptionChangeIsAnUpdate(t *testing.T) {
	m, fakes := newFakeManager(ActionDrop)
	f := fakes[IPv4]
	dockerRuleset(t, f)
	dockerRuleset(t, fakes[IPv6])
	ctx := context.Background()
	_, err := m.Ensure(ctx)
	must(t, err)

	m.SetSpec(Spec{Action: ActionDrop, Exempt: []Exemption{{Container: "c", Port: "veth2", Addrs: addrs("172.17.0.2")}}})
	states, err := m.Ensure(ctx)
	must(t, err)
	if len(states[0].Problems) != 0 || len(states[0].Updates) != 1 || !states[0].Enforced || !states[0].Rebuilt {
		t.Fatalf("adding an exemption: %+v", states[0])
	}
	if len(states[1].Problems) != 0 || len(states[1].Updates) != 0 {
		t.Fatalf("ipv6 unchanged, got %+v", states[1])
	}
	o := parseSave(must1(f.Save(Table)))
	if o.guard[1] != "-A IMDS-GUARD -s 172.17.0.2/32 -d 169.254.169.254/32 -m physdev --physdev-in veth2 -j ACCEPT" || len(o.guard) != 3 {
		t.Fatalf("chain:\n%s", f.Dump())
	}

	// The container dies: the exemption goes in the same Ensure.
	m.SetSpec(Spec{Action: ActionDrop})
	states, err = m.Ensure(ctx)
	must(t, err)
	if len(states[0].Problems) != 0 || len(states[0].Updates) != 1 || !states[0].Enforced {
		t.Fatalf("removing an exemption: %+v", states[0])
	}
	assertProtected(t, f)

	// Someone adds an ACCEPT of their own: drift, repaired.
	must(t, f.Insert(Table, Chain, 1, "-s", "172.17.0.9/32", "-d", IMDSv4, "-j", "ACCEPT"))
	states, err = m.Ensure(ctx)
	must(t, err)
	if len(states[0].Problems) != 1 || states[0].Problems[0].Reason != ReasonChainModified || len(states[0].Updates) != 0 {
		t.Fatalf("foreign ACCEPT: %+v", states[0])
	}
	assertProtected(t, f)
}

func TestHostChainLifecycle(t *testing.T) {
	m, fakes := newFakeManager(ActionDrop)
	f := fakes[IPv4]
	dockerRuleset(t, f)
	must(t, f.Append(Output, "-o", "lo", "-j", "ACCEPT"))
	ctx := context.Background()
	host := &HostSpec{Cgroups: []string{"/system.slice/docker-ab.scope"}}
	m.SetSpec(Spec{Action: ActionDrop, Host: host})
	states, err := m.Ensure(ctx)
	must(t, err)
	if !states[0].Enforced {
		t.Fatalf("%+v", states[0])
	}
	o := parseSave(must1(f.Save(Table)))
	if len(o.output) != 2 || o.output[0] != "-A OUTPUT -j IMDS-GUARD-HOST" {
		t.Fatalf("OUTPUT:\n%s", f.Dump())
	}
	if !slices.Equal(o.host, []string{`-A IMDS-GUARD-HOST -d 169.254.169.254/32 -m cgroup --path "/system.slice/docker-ab.scope" -j DROP`}) {
		t.Fatalf("host chain:\n%s", f.Dump())
	}
	// The container dies: its rule goes, as an update.
	m.SetSpec(Spec{Action: ActionDrop, Host: &HostSpec{}})
	states, err = m.Ensure(ctx)
	must(t, err)
	if len(states[0].Problems) != 0 || len(states[0].Updates) != 1 || !states[0].Enforced {
		t.Fatalf("%+v", states[0])
	}
	// Drift: the OUTPUT jump deleted, the chain flushed by a restore.
	f.Flush(Output)
	states, err = m.Ensure(ctx)
	must(t, err)
	if len(states[0].Problems) != 1 || states[0].Problems[0].Reason != ReasonOutputJumpMissing || !states[0].Enforced {
		t.Fatalf("%+v", states[0])
	}
	// Remove takes both chains and both jumps, and nothing else.
	must(t, m.Remove(ctx))
	if d := f.Dump(); strings.Contains(d, Chain) || !strings.Contains(d, ":"+DockerUser) {
		t.Fatalf("after remove:\n%s", d)
	}
}
