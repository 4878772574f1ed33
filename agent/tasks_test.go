package agent

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/tasknet"
)

// Pure awsvpc enforcement: no fake of Docker or of the namespaces, only
// what a pass would have read and what applying the plan would have found.

const testNS = "/var/run/docker/netns/t"

var (
	blocked4 = tasknet.NSRoutes{V4Blackhole: true, V4Guard: true}
	open4    = tasknet.NSRoutes{V4Escape: "a route lookup reaches IMDS: routed via 192.0.2.1 (table 254)"}
	// bypass4: the blackhole and the guard are there, but a lookup leaves.
	bypass4 = tasknet.NSRoutes{V4Blackhole: true, V4Guard: true, V4Escape: "a route lookup reaches IMDS: routed via 192.0.2.1 (table 100)"}
	v6open  = tasknet.NSRoutes{V4Blackhole: true, V4Guard: true, HasIPv6: true, V6Escape: "a route lookup reaches IMDS: routed (table 254)"}
	v6done  = tasknet.NSRoutes{V4Blackhole: true, V4Guard: true, HasIPv6: true, V6Blackhole: true, V6Guard: true}
)

// oneTask is an awsvpc task: a pause container and an app joined to it.
func oneTask(pause *docker.Details, app *docker.Details) []docker.Container {
	return []docker.Container{
		{ID: "pause0000000", Name: "pause", NetworkMode: "none", Labels: map[string]string{docker.LabelTaskARN: "arn:task/1", docker.LabelTaskFamily: "t"}, Details: pause},
		{ID: "app000000000", Name: "app", NetworkMode: "container:pause0000000", Details: app},
	}
}

func TestTaskPlan(t *testing.T) {
	inspected := &docker.Details{Pid: 4242, SandboxKey: testNS}
	enforceCfg := Config{AWSVPCMode: ECSModeEnforce, IPv6: true}
	read := func(r tasknet.NSRoutes) map[string]nsRead {
		return map[string]nsRead{"pause0000000": {path: testNS, routes: r}}
	}
	for _, tc := range []struct {
		name        string
		cfg         Config
		containers  []docker.Container
		reads       map[string]nsRead
		exempt      map[string]string
		enforce     bool
		unavailable bool
		// want, for the one task (none when unavailable)
		ok        bool
		fams      []firewall.Family
		blackhole []firewall.Family
		layer1    bool
		taskErr   string
		byPid     string
		netAdmin  []string
	}{
		{name: "check mode: a missing route is not added", cfg: Config{AWSVPCMode: ECSModeCheck}, containers: oneTask(inspected, &docker.Details{}),
			reads: read(open4), enforce: true, ok: true, fams: []firewall.Family{firewall.IPv4}, byPid: "/proc/4242/ns/net"},
		{name: "no mode is check mode", containers: oneTask(inspected, &docker.Details{}),
			reads: read(open4), enforce: true, ok: true, fams: []firewall.Family{firewall.IPv4}, byPid: "/proc/4242/ns/net"},
		{name: "enforce: a missing route is added, and the table", cfg: enforceCfg, containers: oneTask(inspected, &docker.Details{}),
			reads: read(open4), enforce: true, ok: true, fams: []firewall.Family{firewall.IPv4}, blackhole: []firewall.Family{firewall.IPv4}, layer1: true, byPid: "/proc/4242/ns/net"},
		{name: "enforce mode in a one-shot check: nothing added", cfg: enforceCfg, containers: oneTask(inspected, &docker.Details{}),
			reads: read(open4), ok: true, fams: []firewall.Family{firewall.IPv4}, byPid: "/proc/4242/ns/net"},
		{name: "enforce, exempt task: nothing added", cfg: enforceCfg, containers: oneTask(inspected, &docker.Details{}),
			reads: read(open4), exempt: map[string]string{"pause0000000": "task family t"}, enforce: true, ok: true, fams: []firewall.Family{firewall.IPv4}, byPid: "/proc/4242/ns/net"},
		{name: "enforce, blocked: no route added, the table still ensured", cfg: enforceCfg, containers: oneTask(inspected, &docker.Details{}),
			reads: read(blocked4), enforce: true, ok: true, fams: []firewall.Family{firewall.IPv4}, layer1: true, byPid: "/proc/4242/ns/net"},
		{name: "enforce, the guard rule deleted", cfg: enforceCfg, containers: oneTask(inspected, &docker.Details{}),
			reads: read(tasknet.NSRoutes{V4Blackhole: true}), enforce: true, ok: true, fams: []firewall.Family{firewall.IPv4}, blackhole: []firewall.Family{firewall.IPv4}, layer1: true, byPid: "/proc/4242/ns/net"},
		{name: "enforce, routed around the blackhole", cfg: enforceCfg, containers: oneTask(inspected, &docker.Details{}),
			reads: read(bypass4), enforce: true, ok: true, fams: []firewall.Family{firewall.IPv4}, blackhole: []firewall.Family{firewall.IPv4}, layer1: true, byPid: "/proc/4242/ns/net"},
		{name: "enforce, IPv6 in the task: only the IPv6 blackhole", cfg: enforceCfg, containers: oneTask(inspected, &docker.Details{}),
			reads: read(v6open), enforce: true, ok: true, fams: []firewall.Family{firewall.IPv4, firewall.IPv6}, blackhole: []firewall.Family{firewall.IPv6}, layer1: true, byPid: "/proc/4242/ns/net"},
		{name: "enforce, IPv6 in the task but --ipv6=false", cfg: Config{AWSVPCMode: ECSModeEnforce}, containers: oneTask(inspected, &docker.Details{}),
			reads: read(v6open), enforce: true, ok: true, fams: []firewall.Family{firewall.IPv4}, layer1: true, byPid: "/proc/4242/ns/net"},
		{name: "enforce, the read failed: nothing added, fail closed", cfg: enforceCfg, containers: oneTask(inspected, &docker.Details{}),
			reads: map[string]nsRead{"pause0000000": {path: testNS, err: errors.New("opening network namespace: no such file")}}, enforce: true, byPid: "/proc/4242/ns/net"},
		{name: "enforce, no read at all: not ok", cfg: enforceCfg, containers: oneTask(inspected, &docker.Details{}),
			enforce: true, byPid: "/proc/4242/ns/net"},
		{name: "pause not inspected", cfg: enforceCfg, containers: oneTask(nil, &docker.Details{}),
			enforce: true, taskErr: "was not inspected"},
		{name: "no namespace path nor pid", cfg: enforceCfg, containers: oneTask(&docker.Details{}, &docker.Details{}),
			enforce: true, taskErr: "no namespace path or pid"},
		{name: "NET_ADMIN, and a joiner that could not be inspected", cfg: enforceCfg, containers: oneTask(&docker.Details{Pid: 9, SandboxKey: testNS, NetAdmin: true}, nil),
			reads: read(blocked4), enforce: true, ok: true, fams: []firewall.Family{firewall.IPv4}, layer1: true, byPid: "/proc/9/ns/net", netAdmin: []string{"pause", "app"}},
		{name: "only a pid: no fallback", cfg: enforceCfg, containers: oneTask(&docker.Details{Pid: 9}, &docker.Details{}),
			reads: map[string]nsRead{"pause0000000": {path: "/proc/9/ns/net", routes: blocked4}}, enforce: true, ok: true, fams: []firewall.Family{firewall.IPv4}, layer1: true},
		{name: "namespaces cannot be read here", cfg: enforceCfg, containers: oneTask(inspected, &docker.Details{}), enforce: true, unavailable: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := planTasks(tc.cfg, awsvpcTasks(tc.containers), tc.reads, tc.exempt, tc.enforce, tc.unavailable)
			if tc.unavailable {
				if len(p.tasks) != 0 || !p.unavailable {
					t.Fatalf("unavailable: %+v", p)
				}
				return
			}
			if len(p.tasks) != 1 {
				t.Fatalf("tasks %+v", p.tasks)
			}
			in := p.tasks[0]
			if in.ok() != tc.ok || !slices.Equal(in.fams, tc.fams) || !slices.Equal(in.blackhole, tc.blackhole) || in.layer1 != tc.layer1 {
				t.Errorf("ok %v fams %v blackhole %v layer1 %v, want %v %v %v %v", in.ok(), in.fams, in.blackhole, in.layer1, tc.ok, tc.fams, tc.blackhole, tc.layer1)
			}
			if (in.task.err == nil) != (tc.taskErr == "") || in.task.err != nil && !strings.Contains(in.task.err.Error(), tc.taskErr) {
				t.Errorf("task error %v, want %q", in.task.err, tc.taskErr)
			}
			if in.task.byPid != tc.byPid || !slices.Equal(in.task.netAdmin, tc.netAdmin) {
				t.Errorf("byPid %q netAdmin %v, want %q %v", in.task.byPid, in.task.netAdmin, tc.byPid, tc.netAdmin)
			}
			if in.exempt != tc.exempt["pause0000000"] {
				t.Errorf("exempt %q", in.exempt)
			}
		})
	}
}

// TestTaskStatus judges tasks by what applying the plan found: the kernel's
// answer, never the plan's intent.
func TestTaskStatus(t *testing.T) {
	inspected := &docker.Details{Pid: 4242, SandboxKey: testNS}
	netAdmin := &docker.Details{NetAdmin: true}
	enforceCfg := Config{AWSVPCMode: ECSModeEnforce, IPv6: true}
	present := &firewall.NFTState{Present: true, Owned: true}
	for _, tc := range []struct {
		name    string
		cfg     Config
		app     *docker.Details
		read    nsRead
		exempt  string
		results func(in taskIntent) map[string]taskResult // nil: nothing applied
		// want
		protected           bool
		reason, err, escape string
		added               []string
		issue               bool // the check-mode NET_ADMIN issue
	}{
		{name: "blocked, guard first", read: nsRead{path: testNS, routes: blocked4},
			protected: true, reason: "guard rule comes first"},
		{name: "blocked by the blackhole alone", read: nsRead{path: testNS, routes: tasknet.NSRoutes{V4Blackhole: true}},
			protected: true, reason: "every route lookup to IMDS in its network namespace is refused"},
		{name: "no route", read: nsRead{path: testNS, routes: open4},
			reason: "no blackhole route", escape: "ipv4: a route lookup reaches IMDS"},
		{name: "routed around the blackhole", read: nsRead{path: testNS, routes: bypass4},
			reason: "despite the blackhole", escape: "table 100"},
		{name: "IPv6 escapes", cfg: Config{IPv6: true}, read: nsRead{path: testNS, routes: v6open},
			reason: "despite the blackhole", escape: "ipv6: a route lookup reaches IMDS"},
		{name: "the read failed", app: netAdmin, read: nsRead{path: testNS, err: errors.New("no such file")},
			reason: "cannot check its network namespace: no such file", err: "no such file", issue: true},
		{name: "repaired and verified", cfg: enforceCfg, read: nsRead{path: testNS, routes: open4},
			results: func(in taskIntent) map[string]taskResult {
				return map[string]taskResult{"pause0000000": {routes: blocked4, added: in.blackhole}}
			},
			protected: true, reason: "guard rule comes first", added: []string{"ipv4"}},
		{name: "IPv6 repaired", cfg: enforceCfg, read: nsRead{path: testNS, routes: v6open},
			results: func(in taskIntent) map[string]taskResult {
				return map[string]taskResult{"pause0000000": {routes: v6done, added: in.blackhole}}
			},
			protected: true, added: []string{"ipv6"}},
		{name: "the repair failed: the read stands", cfg: enforceCfg, read: nsRead{path: testNS, routes: open4},
			results: func(in taskIntent) map[string]taskResult {
				return map[string]taskResult{"pause0000000": {routes: open4, added: in.blackhole, repairErr: errors.New("operation not permitted")}}
			},
			reason: "no blackhole route", err: "operation not permitted", escape: "table 254", added: []string{"ipv4"}},
		{name: "nothing applied: the read stands", cfg: enforceCfg, read: nsRead{path: testNS, routes: open4},
			reason: "no blackhole route", escape: "table 254"},
		{name: "routes gone, the task's table holds", cfg: enforceCfg, read: nsRead{path: testNS, routes: open4},
			results: func(in taskIntent) map[string]taskResult {
				return map[string]taskResult{"pause0000000": {routes: open4, added: in.blackhole, repairErr: errors.New("EPERM"), nft: present}}
			},
			protected: true, err: "EPERM", escape: "table 254", added: []string{"ipv4"}},
		{name: "the task's table failed", cfg: enforceCfg, read: nsRead{path: testNS, routes: blocked4},
			results: func(in taskIntent) map[string]taskResult {
				return map[string]taskResult{"pause0000000": {routes: blocked4, nftErr: errors.New("nftables layer in t: EPERM")}}
			},
			protected: true, err: "nftables layer in t: EPERM"},
		{name: "exempt, blackholed all the same", read: nsRead{path: testNS, routes: blocked4}, exempt: "task family t",
			protected: true, reason: "blackholed all the same"},
		{name: "exempt", read: nsRead{path: testNS, routes: open4}, exempt: "task family t",
			reason: "awsvpc task, exempt (task family t)", escape: "table 254"},
		{name: "NET_ADMIN in check mode", app: netAdmin, read: nsRead{path: testNS, routes: blocked4},
			protected: true, reason: "app holds NET_ADMIN and can delete the routes: nothing puts them back", issue: true},
		{name: "NET_ADMIN in enforce mode", cfg: enforceCfg, app: netAdmin, read: nsRead{path: testNS, routes: blocked4},
			results: func(in taskIntent) map[string]taskResult {
				return map[string]taskResult{"pause0000000": {routes: blocked4}}
			},
			protected: true, reason: "imdsguard puts them back at once"},
		{name: "NET_ADMIN, exempt: no issue", app: netAdmin, read: nsRead{path: testNS, routes: open4}, exempt: "label",
			reason: "exempt (label)", escape: "table 254"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app := tc.app
			if app == nil {
				app = &docker.Details{}
			}
			exempt := map[string]string{}
			if tc.exempt != "" {
				exempt["pause0000000"] = tc.exempt
			}
			p := planTasks(tc.cfg, awsvpcTasks(oneTask(inspected, app)), map[string]nsRead{"pause0000000": tc.read}, exempt, true, false)
			var results map[string]taskResult
			if tc.results != nil {
				results = tc.results(p.tasks[0])
			}
			st, byPause := judgeTasks(p, results)
			if len(st.Tasks) != 1 || byPause["pause0000000"].Pause != "pause" {
				t.Fatalf("tasks %+v", st)
			}
			got := st.Tasks[0]
			if got.Protected != tc.protected || !strings.Contains(got.Reason, tc.reason) {
				t.Errorf("protected %v %q, want %v and a reason with %q", got.Protected, got.Reason, tc.protected, tc.reason)
			}
			if (got.Error == "") != (tc.err == "") || !strings.Contains(got.Error, tc.err) || !strings.Contains(got.Escape, tc.escape) || (got.Escape == "") != (tc.escape == "") {
				t.Errorf("error %q escape %q, want %q %q", got.Error, got.Escape, tc.err, tc.escape)
			}
			if !slices.Equal(got.Added, tc.added) || got.TaskARN != "arn:task/1" || !slices.Equal(got.Containers, []string{"app"}) {
				t.Errorf("task %+v", got)
			}
			issues, errs := taskIssues(st)
			if (len(issues) > 0) != tc.issue || (len(errs) > 0) != (tc.err != "") {
				t.Errorf("issues %q errs %q", issues, errs)
			}
		})
	}
	st, byPause := judgeTasks(planTasks(enforceCfg, awsvpcTasks(oneTask(inspected, nil)), nil, nil, true, true), nil)
	if len(st.Tasks) != 0 || len(byPause) != 0 || st.Error == "" || st.Mode != ECSModeEnforce {
		t.Fatalf("namespaces unavailable: %+v", st)
	}
}
