//go:build linux

package tasknet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/firewall"
)

// tempNetns creates a named network namespace for the test and deletes it
// afterwards.
func tempNetns(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "igt-" + hex.EncodeToString(b)
	ip(t, "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	ip(t, "-n", name, "link", "set", "lo", "up")
	return "/var/run/netns/" + name
}

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// TestKernelNamespaces runs the netlink Namespaces against real throwaway
// namespaces: IPv6 detection, blackholes, the watch, and the refusal of the
// agent's own namespace.
func TestKernelNamespaces(t *testing.T) {
	v4 := tempNetns(t)
	dual := tempNetns(t)
	name := func(p string) string { return strings.TrimPrefix(p, "/var/run/netns/") }
	// A v4-only "ENI" and a dual-stack one: a veth with both ends inside.
	for _, p := range []string{v4, dual} {
		ip(t, "-n", name(p), "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
		ip(t, "-n", name(p), "link", "set", "eth1p", "up")
		ip(t, "-n", name(p), "link", "set", "eth1", "up")
	}
	ip(t, "-n", name(v4), "addr", "add", "192.0.2.2/30", "dev", "eth1")
	ip(t, "-n", name(v4), "route", "add", "default", "via", "192.0.2.1")
	ip(t, "-n", name(dual), "addr", "add", "192.0.2.6/30", "dev", "eth1")
	ip(t, "-n", name(dual), "addr", "add", "fd00:ec2:6::2/64", "dev", "eth1", "nodad")

	ns, err := NewNamespaces()
	if err != nil {
		t.Fatal(err)
	}
	r, err := ns.Routes(v4)
	if err != nil {
		t.Fatal(err)
	}
	if r.HasIPv6 || r.V4Blackhole || r.V6Blackhole {
		t.Fatalf("v4-only namespace: %+v (link-local and loopback IPv6 are not IPv6)", r)
	}
	if r, err = ns.Routes(dual); err != nil || !r.HasIPv6 {
		t.Fatalf("dual-stack namespace: %+v %v", r, err)
	}

	// Blackholes, read back; the IPv6 one does not make IPv6 appear.
	if err := ns.Blackhole(v4, []firewall.Family{firewall.IPv4}); err != nil {
		t.Fatal(err)
	}
	if err := ns.Blackhole(dual, []firewall.Family{firewall.IPv4, firewall.IPv6}); err != nil {
		t.Fatal(err)
	}
	if r, _ := ns.Routes(v4); !r.V4Blackhole || r.HasIPv6 {
		t.Fatalf("v4-only after blackhole: %+v", r)
	}
	if r, _ := ns.Routes(dual); !r.V4Blackhole || !r.V6Blackhole {
		t.Fatalf("dual after blackhole: %+v", r)
	}
	out, _ := exec.Command("ip", "-n", name(v4), "route").CombinedOutput()
	if !strings.Contains(string(out), "blackhole 169.254.169.254") {
		t.Fatalf("ip route shows:\n%s", out)
	}

	// The watch says when it is subscribed, then sees a deletion.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changed := make(chan struct{}, 64)
	werr := make(chan error, 1)
	go func() { werr <- ns.Watch(ctx, dual, func() { changed <- struct{}{} }) }()
	next := func(what string) {
		t.Helper()
		select {
		case <-changed:
		case err := <-werr:
			t.Fatalf("watch ended before %s: %v", what, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("no notification: %s", what)
		}
	}
	next("subscribed")
	ip(t, "-n", name(dual), "route", "del", "169.254.169.254/32")
	next("a deleted blackhole")
	drain := func() {
		for len(changed) > 0 {
			<-changed
		}
	}
	drain()
	ip(t, "-n", name(dual), "rule", "add", "to", "169.254.169.254", "lookup", "100")
	next("an added policy rule")
	cancel()
	if err := <-werr; err != nil {
		t.Fatalf("watch: %v", err)
	}
	ip(t, "-n", name(dual), "rule", "del", "to", "169.254.169.254", "lookup", "100")

	// The agent's own namespace is refused, whatever the path says.
	if _, err := ns.Routes("/proc/self/ns/net"); !errors.Is(err, ErrHostNamespace) {
		t.Fatalf("Routes on the host: %v", err)
	}
	if err := ns.Blackhole("/proc/self/ns/net", []firewall.Family{firewall.IPv4}); !errors.Is(err, ErrHostNamespace) {
		t.Fatalf("Blackhole on the host: %v", err)
	}
	if err := ns.Watch(context.Background(), "/proc/self/ns/net", func() {}); !errors.Is(err, ErrHostNamespace) {
		t.Fatalf("Watch on the host: %v", err)
	}
}

// TestKernelPolicyRuleBypass: a task adds a policy rule and a route in
// another table around the main table's blackhole. The lookup (which
// honours the rules) says so; the guard rule blocks it, ahead of the local
// table and of rules added later; a guard deleted and replaced by the
// task's own rule at priority 0 is put back first.
func TestKernelPolicyRuleBypass(t *testing.T) {
	p := tempNetns(t)
	n := strings.TrimPrefix(p, "/var/run/netns/")
	ip(t, "-n", n, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
	ip(t, "-n", n, "link", "set", "eth1p", "up")
	ip(t, "-n", n, "link", "set", "eth1", "up")
	ip(t, "-n", n, "addr", "add", "192.0.2.2/30", "dev", "eth1")
	ip(t, "-n", n, "route", "add", "blackhole", "169.254.169.254/32")
	ip(t, "-n", n, "route", "add", "default", "via", "192.0.2.1")
	ns, err := NewNamespaces()
	if err != nil {
		t.Fatal(err)
	}
	read := func() NSRoutes {
		t.Helper()
		r, err := ns.Routes(p)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := read(); !r.V4Blackhole || r.V4Escape != "" || r.V4Guard {
		t.Fatalf("blackholed: %+v", r)
	}

	ip(t, "-n", n, "rule", "add", "to", "169.254.169.254", "lookup", "100")
	ip(t, "-n", n, "route", "add", "169.254.169.254", "via", "192.0.2.1", "table", "100")
	if r := read(); !r.V4Blackhole || !strings.Contains(r.V4Escape, "via 192.0.2.1") || !strings.Contains(r.V4Escape, "table 100") {
		t.Fatalf("bypassed, yet: %+v", r)
	}
	// A rule the lookup cannot rule out is not blocked either.
	ip(t, "-n", n, "rule", "add", "to", "169.254.169.254", "fwmark", "0x1", "lookup", "100", "pref", "10")
	ip(t, "-n", n, "rule", "del", "to", "169.254.169.254", "lookup", "100", "pref", "32765")
	if r := read(); !strings.Contains(r.V4Escape, "fwmark") {
		t.Fatalf("fwmark rule ahead of main: %+v", r)
	}
	ip(t, "-n", n, "rule", "add", "to", "169.254.169.254", "lookup", "100")

	if err := ns.Blackhole(p, []firewall.Family{firewall.IPv4}); err != nil {
		t.Fatal(err)
	}
	rules := func() string {
		out, _ := exec.Command("ip", "-n", n, "rule").CombinedOutput()
		return string(out)
	}
	if r := read(); !r.V4Guard || r.V4Escape != "" {
		t.Fatalf("after the guard: %+v\n%s", r, rules())
	}
	if got := rules(); !strings.HasPrefix(got, "0:\tfrom all to 169.254.169.254 blackhole proto 73\n1:\tfrom all lookup local\n") {
		t.Fatalf("rules:\n%s", got)
	}
	// The local table comes after the guard: a route to IMDS there is no way out.
	ip(t, "-n", n, "route", "add", "169.254.169.254", "via", "192.0.2.1", "table", "local")
	ip(t, "-n", n, "rule", "add", "pref", "0", "to", "169.254.169.254", "lookup", "100")
	if r := read(); !r.V4Guard || r.V4Escape != "" {
		t.Fatalf("a rule added at priority 0 after the guard: %+v\n%s", r, rules())
	}
	// Delete the guard, put a rule of one's own first.
	ip(t, "-n", n, "rule", "del", "pref", "0", "to", "169.254.169.254", "lookup", "100")
	ip(t, "-n", n, "rule", "del", "pref", "0", "to", "169.254.169.254", "blackhole")
	ip(t, "-n", n, "rule", "add", "pref", "0", "to", "169.254.169.254", "lookup", "100")
	if r := read(); r.V4Guard || r.V4Escape == "" {
		t.Fatalf("guard deleted and bypassed: %+v\n%s", r, rules())
	}
	if err := ns.Blackhole(p, []firewall.Family{firewall.IPv4}); err != nil {
		t.Fatal(err)
	}
	if r := read(); !r.V4Guard || r.V4Escape != "" {
		t.Fatalf("after the repair: %+v\n%s", r, rules())
	}
	if got := rules(); strings.Count(got, "lookup local") != 1 || strings.Contains(got, "0:\tfrom all to 169.254.169.254 lookup 100") {
		t.Fatalf("rules after the repair:\n%s", got)
	}
}

// TestKernelGuardKeepsTheTasksPriorityOne: with a rule of the task's at
// priority 1, the local rule goes back to 0 behind the guard, so the
// task's rule still comes after local delivery.
func TestKernelGuardKeepsTheTasksPriorityOne(t *testing.T) {
	p := tempNetns(t)
	n := strings.TrimPrefix(p, "/var/run/netns/")
	ip(t, "-n", n, "rule", "add", "pref", "1", "fwmark", "0x7", "lookup", "200")
	ns, err := NewNamespaces()
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.Blackhole(p, []firewall.Family{firewall.IPv4}); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("ip", "-n", n, "rule").CombinedOutput()
	want := "0:\tfrom all to 169.254.169.254 blackhole proto 73\n0:\tfrom all lookup local\n1:\tfrom all fwmark 0x7 lookup 200\n32766:\tfrom all lookup main\n"
	if !strings.HasPrefix(string(out), want) {
		t.Fatalf("rules:\n%s\nwant them to start:\n%s", out, want)
	}
	if r, err := ns.Routes(p); err != nil || !r.V4Guard || r.V4Escape != "" {
		t.Fatalf("%+v %v", r, err)
	}
	// Idempotent: a second pass changes nothing.
	if err := ns.Blackhole(p, []firewall.Family{firewall.IPv4}); err != nil {
		t.Fatal(err)
	}
	if again, _ := exec.Command("ip", "-n", n, "rule").CombinedOutput(); string(again) != string(out) {
		t.Fatalf("second pass changed the rules:\n%s", again)
	}
}
