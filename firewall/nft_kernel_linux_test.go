//go:build linux

package firewall

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// nftCmd runs the nft binary in the calling thread's namespace: another
// process, with a socket of its own, as an operator would.
func nftCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not installed (make tools installs it)")
	}
	out, err := exec.Command("nft", args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func openLayer(t *testing.T, spec NFTSpec) *NFTLayer {
	t.Helper()
	l, err := OpenNFT(0, spec)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return l
}

func mustEnsure(t *testing.T, l *NFTLayer, what string) NFTState {
	t.Helper()
	st, err := l.EnsureNFT(context.Background())
	if err != nil {
		t.Fatalf("%s: ensure: %v", what, err)
	}
	if !st.Present {
		t.Fatalf("%s: not present after ensure: %+v", what, st)
	}
	return st
}

func mustCheck(t *testing.T, l *NFTLayer) NFTState {
	t.Helper()
	st, err := l.CheckNFT(context.Background())
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	return st
}

var kernelSpecNFT = NFTSpec{Scope: ScopeHost, Action: ActionDrop, IPv6: true,
	Exempt: []Exemption{{Container: "exempt", Port: "vethexempt"}}}

// TestNFTKernelOwnership checks, on this kernel, what other processes and
// the owner's exit do to the owned tables: the facts the README's table
// states.
func TestNFTKernelOwnership(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags NFTFlags
	}{{"owner+persist", NFTFlags{Owner: true, Persist: true}}, {"owner", NFTFlags{Owner: true}}} {
		t.Run(tc.name, func(t *testing.T) {
			inNewNetns(t, func() { kernelOwnership(t, tc.flags) })
		})
	}
}

func kernelOwnership(t *testing.T, flags NFTFlags) {
	l := openLayer(t, kernelSpecNFT)
	if !l.Flags().Owner || flags.Persist && !l.Flags().Persist {
		l.Close()
		t.Skipf("kernel offers %+v, test needs %+v", l.Flags(), flags)
	}
	l.flags = flags // owner alone: how a 5.12..6.8 kernel behaves
	st := mustEnsure(t, l, "first")
	if !st.Owned || st.OwnerPort != l.Port() {
		t.Fatalf("not owned by us (port %d): %+v", l.Port(), st)
	}
	if st = mustEnsure(t, l, "steady"); st.Rebuilt || len(st.Problems) != 0 {
		t.Fatalf("steady state rebuilt: %+v", st)
	}

	// Another process: flush the ruleset, delete the table, add a chain.
	if out, err := nftCmd(t, "add", "table", "ip", "other"); err != nil {
		t.Fatalf("add other: %v %s", err, out)
	}
	if out, err := nftCmd(t, "flush", "ruleset"); err != nil {
		t.Fatalf("flush ruleset: %v %s", err, out)
	}
	t.Logf("%s: nft flush ruleset: exit 0", flags)
	if out, _ := nftCmd(t, "list", "tables"); strings.Contains(out, "ip other") {
		t.Fatalf("flush ruleset left an ordinary table: %s", out)
	}
	if st := mustCheck(t, l); !st.Present || len(st.Problems) != 0 {
		t.Fatalf("after nft flush ruleset: %+v", st)
	}
	for _, args := range [][]string{{"delete", "table", "inet", NFTTable}, {"delete", "table", "bridge", NFTTable},
		{"add", "chain", "inet", NFTTable, "sneak"}, {"flush", "table", "inet", NFTTable}} {
		out, err := nftCmd(t, args...)
		if err == nil || !strings.Contains(out, "Operation not permitted") {
			t.Fatalf("nft %s: %v %q, want Operation not permitted", strings.Join(args, " "), err, out)
		}
		t.Logf("%s: nft %s: %s", flags, strings.Join(args, " "), firstLine(out))
	}
	if st := mustCheck(t, l); !st.Present || len(st.Problems) != 0 {
		t.Fatalf("after nft delete table: %+v", st)
	}

	// The owner exits.
	port := l.Port()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := nftCmd(t, "list", "table", "inet", NFTTable)
	if !flags.Persist {
		if err == nil {
			t.Fatalf("owner-only table outlived its owner:\n%s", out)
		}
		t.Logf("%s: owner closed its socket: table gone", flags)
		return
	}
	if err != nil {
		t.Fatalf("persist table gone after the owner exited: %v %s", err, out)
	}
	t.Logf("%s: owner closed its socket: table stays, orphaned", flags)

	// The next agent finds it whole but unowned, and takes it over.
	l2 := openLayer(t, kernelSpecNFT)
	defer l2.Close()
	st = mustCheck(t, l2)
	// (The kernel may hand the new socket the same port id: ownership
	// went with the old socket all the same.)
	if !st.Present || st.Owned || st.OwnerPort != 0 {
		t.Fatalf("orphan as seen by the next agent (port %d, was %d): %+v", l2.Port(), port, st)
	}
	st = mustEnsure(t, l2, "takeover")
	if !st.Owned || st.OwnerPort != l2.Port() {
		t.Fatalf("takeover: %+v", st)
	}
	if out, err := nftCmd(t, "delete", "table", "inet", NFTTable); err == nil {
		t.Fatalf("delete after takeover succeeded: %s", out)
	}
	t.Logf("%s: a new owner took the orphan over; nft delete table: Operation not permitted again", flags)
	// An orphan can be deleted by anyone (what `imdsguard remove` relies on
	// once the agent is stopped).
	l2.Close()
	if out, err := nftCmd(t, "delete", "table", "inet", NFTTable); err != nil {
		t.Fatalf("delete orphan: %v %s", err, out)
	}
	t.Logf("%s: orphan: nft delete table: exit 0", flags)
}

func firstLine(s string) string {
	first, _, _ := strings.Cut(s, "\n")
	return first
}

// TestNFTKernelRemove: remove from another socket after the owner closed
// (orphan), and refused while the owner lives.
func TestNFTKernelRemove(t *testing.T) {
	inNewNetns(t, func() {
		l := openLayer(t, kernelSpecNFT)
		mustEnsure(t, l, "first")
		other := openLayer(t, kernelSpecNFT)
		defer other.Close()
		if err := other.Remove(context.Background()); err == nil || !l.Flags().Owner {
			t.Fatalf("remove while the owner lives: %v", err)
		}
		l.Close()
		if err := other.Remove(context.Background()); err != nil {
			t.Fatalf("remove: %v", err)
		}
		for _, fam := range []string{"inet", "bridge"} {
			if out, err := nftCmd(t, "list", "table", fam, NFTTable); err == nil {
				t.Fatalf("%s table left after remove:\n%s", fam, out)
			}
		}
	})
}

// TestNFTKernelSpecChange: a changed spec (a new exemption, reject) is
// applied in one rebuild and reads back equal.
func TestNFTKernelSpecChange(t *testing.T) {
	inNewNetns(t, func() {
		l := openLayer(t, kernelSpecNFT)
		defer l.Close()
		mustEnsure(t, l, "first")
		s := kernelSpecNFT
		s.Action = ActionReject
		s.Exempt = append(s.Exempt, Exemption{Container: "b", Port: "vethb"}, Exemption{Container: "noport"})
		s.HostCgroups = []string{"/does/not/exist"}
		l.SetSpec(s)
		st := mustEnsure(t, l, "changed")
		if !st.Rebuilt || len(st.Skipped) != 2 {
			t.Fatalf("changed spec: %+v", st)
		}
		if st = mustEnsure(t, l, "steady"); st.Rebuilt {
			t.Fatalf("steady: %+v", st)
		}
		out, _ := nftCmd(t, "list", "table", "bridge", NFTTable)
		if !strings.Contains(out, `iifname "vethb"`) || strings.Contains(out, "drop") {
			t.Fatalf("bridge table:\n%s", out)
		}
	})
}

// topology is a container host in miniature, in throwaway namespaces:
// containers on a bridge in "host", which routes to "far", where IMDS and
// the ECS credentials endpoint listen. Nothing touches the root namespace.
type topology struct {
	host, far netns.NsHandle
	ctrs      map[string]netns.NsHandle // by host-side port name
}

func mustDo(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func addr(t *testing.T, link netlink.Link, cidr string) {
	t.Helper()
	a, err := netlink.ParseAddr(cidr)
	mustDo(t, err, cidr)
	a.Flags = 0x02 // IFA_F_NODAD: usable at once
	mustDo(t, netlink.AddrAdd(link, a), "address "+cidr)
}

func up(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	mustDo(t, err, name)
	mustDo(t, netlink.LinkSetUp(l), "up "+name)
	return l
}

func sysctl(t *testing.T, kv string) {
	t.Helper()
	out, err := exec.Command("sysctl", "-qw", kv).CombinedOutput()
	mustDo(t, err, "sysctl "+kv+": "+string(out))
}

// newTopology builds it on the calling (locked) thread, which it leaves in
// host.
func newTopology(t *testing.T, ports ...string) *topology {
	tp := &topology{ctrs: map[string]netns.NsHandle{}}
	var err error
	tp.far, err = netns.New()
	mustDo(t, err, "far netns")
	up(t, "lo")
	sysctl(t, "net.ipv6.conf.default.accept_dad=0")
	tp.host, err = netns.New()
	mustDo(t, err, "host netns")
	t.Cleanup(func() { tp.far.Close(); tp.host.Close() })
	up(t, "lo")
	sysctl(t, "net.ipv6.conf.default.accept_dad=0")
	sysctl(t, "net.ipv4.ip_forward=1")
	sysctl(t, "net.ipv6.conf.all.forwarding=1")
	mustDo(t, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "far0", PeerNamespace: netlink.NsFd(tp.far)}), "veth to far")
	addr(t, up(t, "up0"), "10.99.0.1/24")
	addr(t, up(t, "up0"), "fdbb::1/64")
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	mustDo(t, netlink.LinkAdd(br), "bridge")
	addr(t, up(t, "br0"), "172.30.0.1/24")
	addr(t, up(t, "br0"), "fdaa::1/64")
	_, imds, _ := net.ParseCIDR("169.254.0.0/16")
	_, imds6, _ := net.ParseCIDR("fd00:ec2::/64")
	for _, dst := range []*net.IPNet{imds, imds6} {
		gw := net.ParseIP("10.99.0.2")
		if dst.IP.To4() == nil {
			gw = net.ParseIP("fdbb::2")
		}
		mustDo(t, netlink.RouteAdd(&netlink.Route{Dst: dst, Gw: gw}), "route to far")
	}
	for i, p := range ports {
		ns, err := netns.New()
		mustDo(t, err, "container netns")
		t.Cleanup(func() { ns.Close() })
		tp.ctrs[p] = ns
		mustDo(t, netns.Set(tp.host), "back to host")
		mustDo(t, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p, MasterIndex: 0}, PeerName: "eth0", PeerNamespace: netlink.NsFd(ns)}), "veth "+p)
		port := up(t, p)
		mustDo(t, netlink.LinkSetMaster(port, br), "enslave "+p)
		mustDo(t, netns.Set(ns), "into container")
		up(t, "lo")
		eth := up(t, "eth0")
		addr(t, eth, "172.30.0."+strconv.Itoa(10+i)+"/24")
		addr(t, eth, "fdaa::"+strconv.Itoa(10+i)+"/64")
		mustDo(t, netlink.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.ParseIP("172.30.0.1")}), "default route")
		mustDo(t, netlink.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.ParseIP("fdaa::1")}), "default route v6")
	}
	mustDo(t, netns.Set(tp.host), "back to host")
	upLink, err := netlink.LinkByName("up0")
	mustDo(t, err, "up0")
	mustDo(t, netns.Set(tp.far), "into far")
	far := up(t, "far0")
	// Static neighbours across the link: IPv6 neighbour discovery over a
	// veth whose far end just came up is not reliable at once.
	mustDo(t, netlink.NeighAdd(&netlink.Neigh{LinkIndex: far.Attrs().Index, State: netlink.NUD_PERMANENT,
		IP: net.ParseIP("fdbb::1"), HardwareAddr: upLink.Attrs().HardwareAddr}), "neighbour fdbb::1")
	addr(t, far, "10.99.0.2/24")
	addr(t, far, "fdbb::2/64")
	lo, _ := netlink.LinkByName("lo")
	for _, a := range []string{"169.254.169.254/32", "169.254.170.2/32", "fd00:ec2::254/128"} {
		addr(t, lo, a)
	}
	for _, dst := range []string{"172.30.0.0/24", "fdaa::/64"} {
		_, n, _ := net.ParseCIDR(dst)
		gw := net.ParseIP("10.99.0.1")
		if n.IP.To4() == nil {
			gw = net.ParseIP("fdbb::1")
		}
		mustDo(t, netlink.RouteAdd(&netlink.Route{Dst: n, Gw: gw}), "route back")
	}
	for _, a := range []string{"169.254.169.254:80", "169.254.170.2:80", "[fd00:ec2::254]:80"} {
		l, err := net.Listen("tcp", a)
		mustDo(t, err, "listen "+a)
		t.Cleanup(func() { l.Close() })
		go acceptAndClose(l)
	}
	mustDo(t, netns.Set(tp.host), "back to host")
	mustDo(t, netlink.NeighAdd(&netlink.Neigh{LinkIndex: upLink.Attrs().Index, State: netlink.NUD_PERMANENT,
		IP: net.ParseIP("fdbb::2"), HardwareAddr: far.Attrs().HardwareAddr}), "neighbour fdbb::2")
	return tp
}

// dial connects from the container behind port; the thread returns to host.
func (tp *topology) dial(t *testing.T, port, dst string) error {
	t.Helper()
	mustDo(t, netns.Set(tp.ctrs[port]), "into container")
	defer func() { mustDo(t, netns.Set(tp.host), "back to host") }()
	c, err := net.DialTimeout("tcp", dst, 700*time.Millisecond)
	if err == nil {
		c.Close()
	}
	return err
}

// TestNFTKernelTraffic: layer 1 alone (no iptables at all) drops IMDS v4
// and v6 from a bridged container, lets its neighbour 169.254.170.2
// through, lets the exempt container's port through, and keeps doing so
// after `nft flush ruleset`.
func TestNFTKernelTraffic(t *testing.T) {
	inNewNetns(t, func() {
		tp := newTopology(t, "vethblocked", "vethexempt")
		imds := []string{"169.254.169.254:80", "[fd00:ec2::254]:80"}
		// The topology is ready when every path answers (the first
		// packets wait for neighbour resolution): a few tries each.
		for _, p := range []string{"vethblocked", "vethexempt"} {
			for _, d := range append(imds, "169.254.170.2:80") {
				err := tp.dial(t, p, d)
				for try := 0; err != nil && try < 5; try++ {
					err = tp.dial(t, p, d)
				}
				mustDo(t, err, "before layer 1, "+p+" to "+d)
			}
		}
		l := openLayer(t, kernelSpecNFT)
		defer l.Close()
		mustEnsure(t, l, "first")
		check := func(when string) {
			for _, d := range imds {
				if err := tp.dial(t, "vethblocked", d); err == nil {
					t.Fatalf("%s: blocked container reached %s", when, d)
				}
				mustDo(t, tp.dial(t, "vethexempt", d), when+": exempt container to "+d)
			}
			mustDo(t, tp.dial(t, "vethblocked", "169.254.170.2:80"), when+": neighbour 169.254.170.2")
		}
		check("owned tables")
		out, err := nftCmd(t, "flush", "ruleset")
		mustDo(t, err, "flush ruleset: "+out)
		check("after nft flush ruleset")
		st := mustCheck(t, l)
		if st.Packets == 0 {
			t.Fatalf("counters saw no blocked packets: %+v", st)
		}
		t.Logf("blocked: %d packets, %d bytes", st.Packets, st.Bytes)
	})
}

// dockerNFT is Docker 29's nftables firewall backend for one bridge, from
// moby's integration/network/bridge/nftablesdoc/generated/new-daemon.md,
// with docker0 and 172.17.0.0/16 replaced by the test's bridge and the
// priority names by their numbers (this nft takes no "dstnat" in output).
const dockerNFT = `table ip docker-bridges {
	map filter-forward-in-jumps { type ifname : verdict; elements = { "br0" : jump filter-forward-in__br0 } }
	map filter-forward-out-jumps { type ifname : verdict; elements = { "br0" : jump filter-forward-out__br0 } }
	map nat-postrouting-in-jumps { type ifname : verdict; elements = { "br0" : jump nat-postrouting-in__br0 } }
	map nat-postrouting-out-jumps { type ifname : verdict; elements = { "br0" : jump nat-postrouting-out__br0 } }
	chain filter-FORWARD {
		type filter hook forward priority 0; policy accept;
		oifname vmap @filter-forward-in-jumps
		iifname vmap @filter-forward-out-jumps
	}
	chain nat-OUTPUT {
		type nat hook output priority -100; policy accept;
		ip daddr != 127.0.0.0/8 fib daddr type local counter jump nat-prerouting-and-output
	}
	chain nat-POSTROUTING {
		type nat hook postrouting priority 100; policy accept;
		iifname vmap @nat-postrouting-out-jumps
		oifname vmap @nat-postrouting-in-jumps
	}
	chain nat-PREROUTING {
		type nat hook prerouting priority -100; policy accept;
		fib daddr type local counter jump nat-prerouting-and-output
	}
	chain nat-prerouting-and-output {
	}
	chain raw-PREROUTING {
		type filter hook prerouting priority -300; policy accept;
	}
	chain filter-forward-in__br0 {
		ct state established,related counter accept
		iifname "br0" counter accept comment "ICC"
		counter drop comment "UNPUBLISHED PORT DROP"
	}
	chain filter-forward-out__br0 {
		ct state established,related counter accept
		counter accept comment "OUTGOING"
	}
	chain nat-postrouting-in__br0 {
	}
	chain nat-postrouting-out__br0 {
		oifname != "br0" ip saddr 172.30.0.0/24 counter masquerade comment "MASQUERADE"
	}
}
`

// TestNFTKernelDocker29: with Docker 29's nftables backend (built by hand:
// Docker 29 is in no Debian suite) its filter-FORWARD accepts the
// container's traffic to IMDS, and there is no DOCKER-USER; layer 1 drops it
// all the same, and imdsguard sees Docker's tables.
func TestNFTKernelDocker29(t *testing.T) {
	inNewNetns(t, func() {
		tp := newTopology(t, "vethblocked", "vethexempt")
		cmd := exec.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader(dockerNFT)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("loading Docker's tables: %v %s", err, out)
		}
		if ok, err := DockerNFTables(); err != nil || !ok {
			t.Fatalf("Docker's nftables backend not detected: %v %v", ok, err)
		}
		err := tp.dial(t, "vethblocked", "169.254.169.254:80")
		for try := 0; err != nil && try < 5; try++ {
			err = tp.dial(t, "vethblocked", "169.254.169.254:80")
		}
		mustDo(t, err, "Docker's rules alone accept the container's IMDS traffic")
		l := openLayer(t, NFTSpec{Scope: ScopeHost, Action: ActionDrop, Exempt: []Exemption{{Container: "x", Port: "vethexempt"}}})
		defer l.Close()
		mustEnsure(t, l, "first")
		if err := tp.dial(t, "vethblocked", "169.254.169.254:80"); err == nil {
			t.Fatal("layer 1 beside Docker's nftables tables: the container reached IMDS")
		}
		mustDo(t, tp.dial(t, "vethexempt", "169.254.169.254:80"), "exempt container")
		mustDo(t, tp.dial(t, "vethblocked", "169.254.170.2:80"), "neighbour")
		out, _ := nftCmd(t, "list", "chain", "ip", "docker-bridges", "filter-forward-out__br0")
		if !strings.Contains(out, "counter packets") || strings.Contains(out, "packets 0 bytes 0 accept comment \"OUTGOING\"") {
			t.Fatalf("Docker's OUTGOING accept saw nothing:\n%s", out)
		}
		t.Logf("Docker's chain, which accepted:\n%s", out)
	})
}

// TestNFTKernelTask: layer 1 inside an awsvpc task's own namespace, opened
// from outside it (the socket is created in the namespace, the agent stays
// where it is). A process in the task with NET_ADMIN deletes the route to
// IMDS's network and adds its own way there, runs `nft flush ruleset` and
// tries to delete the table: IMDS stays unreachable, the credentials
// endpoint answers.
func TestNFTKernelTask(t *testing.T) {
	inNewNetns(t, func() {
		tp := newTopology(t, "vethtask")
		task := tp.ctrs["vethtask"]
		l, err := OpenNFT(int(task), NFTSpec{Scope: ScopeTask, Action: ActionDrop, IPv6: true})
		mustDo(t, err, "open in the task namespace")
		defer l.Close()
		mustEnsure(t, l, "task")
		if out, err := nftCmd(t, "list", "tables"); err != nil || strings.Contains(out, NFTTable) {
			t.Fatalf("the task's table is in the host namespace: %v %s", err, out)
		}
		blocked := func(when string) {
			for _, d := range []string{"169.254.169.254:80", "[fd00:ec2::254]:80"} {
				if err := tp.dial(t, "vethtask", d); err == nil {
					t.Fatalf("%s: the task reached %s", when, d)
				}
			}
			mustDo(t, tp.dial(t, "vethtask", "169.254.170.2:80"), when+": credentials endpoint")
		}
		blocked("owned table")
		mustDo(t, netns.Set(task), "into the task")
		for _, c := range [][]string{
			{"nft", "flush", "ruleset"},
			{"ip", "route", "add", "169.254.169.254/32", "via", "172.30.0.1", "table", "100"},
			{"ip", "rule", "add", "to", "169.254.169.254", "lookup", "100", "priority", "10"},
		} {
			out, err := exec.Command(c[0], c[1:]...).CombinedOutput()
			mustDo(t, err, strings.Join(c, " ")+": "+string(out))
		}
		out, err := exec.Command("nft", "delete", "table", "inet", NFTTable).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "Operation not permitted") {
			t.Fatalf("delete from inside the task: %v %s", err, out)
		}
		mustDo(t, netns.Set(tp.host), "back to host")
		blocked("after flush ruleset, a policy route and a delete from inside")
		if st := mustCheck(t, l); !st.Present || !st.Owned {
			t.Fatalf("task table: %+v", st)
		}
	})
}

// TestNFTKernelCgroup: a `socket cgroupv2` rule reads back equal (no
// rebuild in the steady state, which would otherwise commit, wake the
// nf_tables monitor and rebuild again), and drops IMDS traffic from a
// process in the cgroup only.
func TestNFTKernelCgroup(t *testing.T) {
	root := cgroup2Mount(t)
	cg := "/imdsguard-nft-test-" + strconv.Itoa(os.Getpid())
	dir := filepath.Join(root, cg)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot create a cgroup v2 group under %s: %v", root, err)
	}
	t.Cleanup(func() { _ = os.Remove(dir) })
	inNewNetns(t, func() {
		for _, action := range []Action{ActionDrop, ActionReject} {
			l := openLayer(t, NFTSpec{Scope: ScopeHost, Action: action, IPv6: true, HostCgroups: []string{cg}})
			st := mustEnsure(t, l, "first")
			if len(st.Skipped) != 0 {
				t.Fatalf("skipped: %q", st.Skipped)
			}
			if st = mustEnsure(t, l, "steady"); st.Rebuilt || len(st.Problems) != 0 {
				t.Fatalf("%s: steady state rebuilt: %+v", action, st)
			}
			if action == ActionDrop {
				kernelCgroupTraffic(t, dir)
			}
			mustDo(t, l.Remove(context.Background()), "remove")
			l.Close()
		}
	})
}

func kernelCgroupTraffic(t *testing.T, dir string) {
	up(t, "lo")
	lo, _ := netlink.LinkByName("lo")
	addr(t, lo, "169.254.169.254/32")
	l, err := net.Listen("tcp", "169.254.169.254:80")
	mustDo(t, err, "listen")
	defer l.Close()
	go acceptAndClose(l)
	dial := func(inCgroup bool) error {
		script := "exec busybox nc -w 1 169.254.169.254 80 </dev/null"
		if inCgroup {
			script = "echo $$ > " + filepath.Join(dir, "cgroup.procs") + " && " + script
		}
		return exec.Command("sh", "-c", script).Run()
	}
	mustDo(t, dial(false), "outside the cgroup")
	if err := dial(true); err == nil {
		t.Fatal("inside the cgroup: IMDS answered")
	}
}

// acceptAndClose answers every connection by closing it: enough for a dial
// to succeed.
func acceptAndClose(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}
