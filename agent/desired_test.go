package agent

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/ecsconfig"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
	"github.com/imdsguard/imdsguard/tasknet"
)

// TestDesired runs the pure part of a pass, desired then judge, over what a
// pass would have read and observed: no fake of Docker, iptables or the
// machine.
func TestDesired(t *testing.T) {
	ruleset := func(accepts ...string) *firewall.Ruleset {
		save := "*filter\n:FORWARD ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n:IMDS-GUARD - [0:0]\n" +
			"-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j IMDS-GUARD\n"
		for _, id := range accepts { // the ACCEPT an exemption of c<id> writes
			save += "-A IMDS-GUARD -s 172.17.0." + id + "/32 -d 169.254.169.254/32 -m physdev --physdev-in veth" + id + " -j ACCEPT\n"
		}
		rs, err := firewall.ParseRuleset(firewall.IPv4, []byte(save+"-A IMDS-GUARD -d 169.254.169.254/32 -j DROP\nCOMMIT\n"))
		if err != nil {
			t.Fatal(err)
		}
		rs.BridgeNF = firewall.Yes
		return rs
	}
	rs := ruleset()
	withAccept := func(ids ...string) observed {
		return observed{enforced: map[string]bool{"ipv4": true}, rules: map[string]*firewall.Ruleset{"ipv4": ruleset(ids...)}, hostVerified: true}
	}
	v4 := map[string]*firewall.Ruleset{"ipv4": rs}
	addr := netip.MustParseAddr
	label := map[string]string{"imdsguard.allow-imds": "true"}
	family := map[string]string{docker.LabelTaskFamily: "cwagent"}
	none := map[string]string{}
	bridged := func(id string, labels, image map[string]string) docker.Container {
		a := addr("172.17.0." + id)
		return docker.Container{ID: id + "000000000000", Name: "c" + id, NetworkMode: "bridge", IPv4: []netip.Addr{a},
			Labels: labels, ImageLabels: image, Ports: map[netip.Addr]docker.BridgePort{a: {Name: "veth" + id, Bridge: "docker0"}}}
	}
	hostc := docker.Container{ID: "h00000000000", Name: "hostc", NetworkMode: "host", Details: &docker.Details{Pid: 42}}
	agentc := docker.Container{ID: "e00000000000", Name: docker.ECSAgentName, NetworkMode: "host", Details: &docker.Details{Pid: 7},
		Env: []string{"ECS_AWSVPC_BLOCK_IMDS=true"}}
	ecsBlocks := ecsRead{last: ecsFiles{res: ecsconfig.Result{AWSVPCBlockIMDS: true}}}
	const taskNS = "/var/run/docker/netns/p"
	task := docker.Container{ID: "p00000000000", Name: "pause", NetworkMode: "none", Labels: map[string]string{docker.LabelTaskARN: "arn:task/1"},
		Details: &docker.Details{Pid: 4242, SandboxKey: taskNS}}
	forbidden := []string{"/system.slice/imdsguard.service", "/init.scope", "/ecs/agent"}
	cfgExempt := Config{Action: firewall.ActionDrop, ExemptLabel: "imdsguard.allow-imds", ExemptTaskFamilies: []string{"cwagent"}}
	cfgHost := Config{Action: firewall.ActionDrop, BlockHostNetwork: true}
	readsOK := func(cg map[string]cgroupRead) hostReads {
		return hostReads{canInspect: true, forbidden: forbidden, cgroups: cg}
	}
	verified := observed{enforced: map[string]bool{"ipv4": true}, rules: v4, hostVerified: true}
	unreadable := errors.New("reading the cgroup of 42: no such file")

	cases := []struct {
		name string
		w    world
		o    observed
		// what the firewall must hold
		exempt []string // ports
		host   []string // cgroups; nil: the host chain is left as it is
		stale  []string
		// what is judged
		protected map[string]bool
		reason    map[string]string
		// hostReason: what the host-network status says, by name
		hostReason map[string]string
		verdict    string
		remember   bool
		hostErr    bool
	}{
		{name: "bridge blocked", w: world{cfg: cfgExempt, snap: docker.Snapshot{Containers: []docker.Container{bridged("2", nil, nil)}}}, o: verified,
			protected: map[string]bool{"c2": true}, reason: map[string]string{"c2": "bridged: "}, verdict: status.VerdictProtected},
		{name: "exempt by its own label", w: world{cfg: cfgExempt, snap: docker.Snapshot{Containers: []docker.Container{bridged("3", label, none)}}}, o: withAccept("3"),
			exempt: []string{"veth3"}, protected: map[string]bool{"c3": false}, reason: map[string]string{"c3": "exempt (label imdsguard.allow-imds)"},
			verdict: status.VerdictProtected},
		{name: "exempt, but the firewall was found without its ACCEPT", w: world{cfg: cfgExempt, snap: docker.Snapshot{Containers: []docker.Container{bridged("3", label, none)}}}, o: verified,
			exempt: []string{"veth3"}, protected: map[string]bool{"c3": true}, reason: map[string]string{"c3": "blocked all the same"}, verdict: status.VerdictProtected},
		{name: "label also on the image: not exempt", w: world{cfg: cfgExempt, snap: docker.Snapshot{Containers: []docker.Container{bridged("4", label, label)}}}, o: verified,
			protected: map[string]bool{"c4": true}, verdict: status.VerdictProtected},
		{name: "family also on the image: not exempt", w: world{cfg: cfgExempt, snap: docker.Snapshot{Containers: []docker.Container{bridged("5", family, family)}}}, o: verified,
			protected: map[string]bool{"c5": true}, verdict: status.VerdictProtected},
		{name: "exempt by family", w: world{cfg: cfgExempt, snap: docker.Snapshot{Containers: []docker.Container{bridged("6", family, none)}}}, o: withAccept("6"),
			exempt: []string{"veth6"}, protected: map[string]bool{"c6": false}, verdict: status.VerdictProtected},
		{name: "host network, cgroup resolved", w: world{cfg: cfgHost, snap: docker.Snapshot{Containers: []docker.Container{hostc, agentc}}, ecs: ecsBlocks,
			host: readsOK(map[string]cgroupRead{hostc.ID: {path: "/docker/h", id: 9}})}, o: verified,
			host: []string{"/docker/h"}, protected: map[string]bool{"hostc": true, docker.ECSAgentName: false}, verdict: status.VerdictProtected, remember: true},
		{name: "host network, the firewall not verified", w: world{cfg: cfgHost, snap: docker.Snapshot{Containers: []docker.Container{hostc}},
			host: readsOK(map[string]cgroupRead{hostc.ID: {path: "/docker/h", id: 9}})}, o: observed{enforced: map[string]bool{"ipv4": false}},
			host: []string{"/docker/h"}, protected: map[string]bool{"hostc": false}, verdict: status.VerdictExposed, remember: true},
		{name: "host network, cgroup unresolvable", w: world{cfg: cfgHost, snap: docker.Snapshot{Containers: []docker.Container{hostc}},
			host: readsOK(map[string]cgroupRead{hostc.ID: {pathErr: unreadable}})}, o: verified,
			host: []string{}, protected: map[string]bool{"hostc": false}, hostReason: map[string]string{"hostc": "no such file"},
			verdict: status.VerdictDegraded, remember: true, hostErr: true},
		{name: "host network, unresolvable now, kept from the last sync and recreated", w: world{cfg: cfgHost, snap: docker.Snapshot{Containers: []docker.Container{hostc}},
			host: readsOK(map[string]cgroupRead{hostc.ID: {pathErr: unreadable, prevID: 10}}), hostLast: map[string]hostCgroup{hostc.ID: {path: "/docker/h", id: 9}}}, o: verified,
			host: []string{"/docker/h"}, stale: []string{"/docker/h"}, protected: map[string]bool{"hostc": true}, hostReason: map[string]string{"hostc": "kept from the last sync"},
			verdict: status.VerdictProtected, remember: true, hostErr: true},
		{name: "host network, a cgroup that holds the agent's", w: world{cfg: cfgHost, snap: docker.Snapshot{Containers: []docker.Container{hostc}},
			host: readsOK(map[string]cgroupRead{hostc.ID: {path: "/system.slice", id: 9}})}, o: verified,
			host: []string{}, protected: map[string]bool{"hostc": false}, hostReason: map[string]string{"hostc": "must keep IMDS"}, verdict: status.VerdictDegraded, remember: true},
		{name: "host network, not cgroup v2", w: world{cfg: cfgHost, snap: docker.Snapshot{Containers: []docker.Container{hostc}},
			host: hostReads{canInspect: true, unified: errors.New("cgroup v1")}}, o: verified,
			protected: map[string]bool{"hostc": false}, hostReason: map[string]string{"hostc": "unavailable: cgroup v1"}, verdict: status.VerdictDegraded},
		{name: "Docker unreachable", w: world{cfg: cfgHost, snap: docker.Snapshot{Err: errors.New("connection refused")},
			host: readsOK(nil), hostLast: map[string]hostCgroup{hostc.ID: {path: "/docker/h", id: 9}}}, o: verified,
			verdict: status.VerdictDegraded},
		{name: "awsvpc task with its route", w: world{cfg: cfgExempt, snap: docker.Snapshot{Containers: []docker.Container{task}},
			taskReads: map[string]nsRead{task.ID: {path: taskNS, routes: tasknet.NSRoutes{V4Blackhole: true, V4Guard: true}}}}, o: verified,
			protected: map[string]bool{"pause": true}, reason: map[string]string{"pause": "guard rule comes first"}, verdict: status.VerdictProtected},
		{name: "awsvpc task without its route", w: world{cfg: cfgExempt, snap: docker.Snapshot{Containers: []docker.Container{task}},
			taskReads: map[string]nsRead{task.ID: {path: taskNS, routes: tasknet.NSRoutes{V4Escape: "a route lookup reaches IMDS"}}}}, o: verified,
			protected: map[string]bool{"pause": false}, reason: map[string]string{"pause": "no blackhole route"}, verdict: status.VerdictDegraded},
		{name: "awsvpc task whose namespace could not be read", w: world{cfg: cfgExempt, snap: docker.Snapshot{Containers: []docker.Container{task}},
			taskReads: map[string]nsRead{task.ID: {path: taskNS, err: errors.New("no such file")}}}, o: verified,
			protected: map[string]bool{"pause": false}, reason: map[string]string{"pause": "cannot check"}, verdict: status.VerdictDegraded},
		{name: "awsvpc task not checked, the ECS agent blocks", w: world{cfg: cfgExempt, snap: docker.Snapshot{Containers: []docker.Container{task}},
			nsUnavailable: true, ecs: ecsBlocks}, o: verified,
			protected: map[string]bool{"pause": true}, reason: map[string]string{"pause": "in effect"}, verdict: status.VerdictProtected},
		{name: "awsvpc task not checked, the ECS agent does not block", w: world{cfg: cfgExempt, snap: docker.Snapshot{Containers: []docker.Container{task}},
			nsUnavailable: true}, o: verified,
			protected: map[string]bool{"pause": false}, reason: map[string]string{"pause": "not in effect"}, verdict: status.VerdictDegraded},
		{name: "IPv6 not applicable", w: world{cfg: Config{Action: firewall.ActionDrop}, snap: docker.Snapshot{Containers: []docker.Container{bridged("8", nil, nil)}}},
			o: verified, protected: map[string]bool{"c8": true}, verdict: status.VerdictProtected},
		{name: "IPv6 block not in place", w: world{cfg: Config{Action: firewall.ActionDrop, IPv6: true}, snap: docker.Snapshot{Containers: []docker.Container{bridged("9", nil, nil)}}},
			o: observed{enforced: map[string]bool{"ipv4": true, "ipv6": false}, rules: v4}, protected: map[string]bool{"c9": true}, verdict: status.VerdictExposed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.w.tasks = awsvpcTasks(tc.w.snap.Containers) // as the read phase locates them
			p := desired(tc.w)
			var ports []string
			for _, e := range p.spec.Exempt {
				ports = append(ports, e.Port)
			}
			if !slices.Equal(ports, tc.exempt) {
				t.Errorf("exempt ports %v, want %v", ports, tc.exempt)
			}
			switch {
			case tc.host == nil && p.spec.Host != nil:
				t.Errorf("host spec %v, want the host chain left as it is", p.spec.Host.Cgroups)
			case tc.host != nil && (p.spec.Host == nil || !slices.Equal(p.spec.Host.Cgroups, tc.host)):
				t.Errorf("host spec %+v, want %v", p.spec.Host, tc.host)
			}
			if !slices.Equal(p.host.stale, tc.stale) || p.host.remember != tc.remember || (p.host.err != nil) != tc.hostErr {
				t.Errorf("stale %v remember %v err %v", p.host.stale, p.host.remember, p.host.err)
			}
			if p.spec.Action != tc.w.cfg.Action {
				t.Errorf("action %q", p.spec.Action)
			}
			j := judge(tc.w.snap.Containers, p, tc.o)
			cs, v, reasons := j.containers, j.verdict, j.reasons
			if v != tc.verdict {
				t.Errorf("verdict %s %q, want %s", v, reasons, tc.verdict)
			}
			got := map[string]status.ContainerStatus{}
			for _, c := range cs {
				got[c.Name] = c
			}
			if len(got) != len(tc.protected) {
				t.Errorf("containers %+v", cs)
			}
			for name, want := range tc.protected {
				if c := got[name]; c.Protected != want || !strings.Contains(c.Reason, tc.reason[name]) {
					t.Errorf("%s: %+v, want protected=%v, reason with %q", name, c, want, tc.reason[name])
				}
			}
			hosts := map[string]string{}
			for _, h := range p.host.status.Containers {
				hosts[h.Name] = h.Reason
			}
			for name, want := range tc.hostReason {
				if !strings.Contains(hosts[name], want) {
					t.Errorf("%s: host-network status %q, want %q", name, hosts[name], want)
				}
			}
			if tc.w.snap.Err != nil && (len(p.exempt) > 0 || !slices.ContainsFunc(reasons, func(r string) bool { return strings.Contains(r, "Docker cannot be asked") })) {
				t.Errorf("Docker unreachable: exempt %v, reasons %q", p.exempt, reasons)
			}
		})
	}
}
