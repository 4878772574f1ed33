package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/imdsguard/imdsguard/firewall"
)

// awsvpc tasks own an ENI inside their pause container's network namespace:
// their IMDS traffic never crosses the host's FORWARD chain, so the block
// there is a blackhole route in that namespace, as the ECS CNI plugins add
// with ECS_AWSVPC_BLOCK_IMDS=true.

// Namespaces reads and adds the IMDS blackhole routes of other network
// namespaces. Every method refuses the host's own namespace with
// ErrHostNamespace.
type Namespaces interface {
	Routes(path string) (NSRoutes, error)
	// Blackhole adds (or replaces with) blackhole routes to IMDS for fams,
	// and the guard rule that puts a blackhole ahead of every policy rule.
	Blackhole(path string, fams []firewall.Family) error
	// Watch calls changed once subscribed and whenever a route or policy
	// rule in the namespace changes, until ctx ends or the namespace goes
	// away.
	Watch(ctx context.Context, path string, changed func()) error
}

// ErrHostNamespace means a path led to the host's own network namespace,
// where a blackhole would cut the ECS agent (and the host) off IMDS.
var ErrHostNamespace = errors.New("refusing to act on the host's own network namespace")

// NSRoutes is what a namespace's routes say about IMDS.
type NSRoutes struct {
	V4Blackhole bool
	V6Blackhole bool
	// HasIPv6: the namespace has a global IPv6 address or an IPv6 route
	// other than link-local, loopback and our blackhole. Only then is the
	// IPv6 blackhole added: on a v4-only namespace it broke ECS task
	// networking (aws/amazon-vpc-cni-plugins#106).
	HasIPv6 bool
	// V4Guard, V6Guard: imdsguard's guard rule is the first policy rule.
	V4Guard, V6Guard bool
	// V4Escape, V6Escape say how a packet to IMDS would still leave (a
	// route lookup that honours the policy rules found a way, or a rule
	// matches on something a lookup cannot test); "" when the kernel
	// refuses every lookup.
	V4Escape, V6Escape string
}

// blocked: the blackhole route and the guard rule are in place and no
// lookup escapes; enforce mode repairs anything less.
func (r NSRoutes) blocked(f firewall.Family) bool {
	if f == firewall.IPv6 {
		return r.V6Blackhole && r.V6Guard && r.V6Escape == ""
	}
	return r.V4Blackhole && r.V4Guard && r.V4Escape == ""
}

// Escape is how a packet of family f to IMDS would leave ("" for none).
func (r NSRoutes) Escape(f firewall.Family) string {
	if f == firewall.IPv6 {
		return r.V6Escape
	}
	return r.V4Escape
}

// guardProtocol marks imdsguard's guard rule (FRA_PROTOCOL), as routing
// daemons mark theirs. A copy with another action is not the guard.
const guardProtocol = 73

// policyRule is one `ip rule` as the judgement needs it.
type policyRule struct {
	Pref     int
	Family   int
	Action   uint8 // FR_ACT_*
	Table    int
	Protocol uint8
	Src, Dst *net.IPNet
	// Selectors are the keys it matches on besides source and
	// destination (fwmark, tos, iif, ...), which a route lookup by
	// source and destination does not test.
	Selectors string
}

const (
	frActToTbl     = 1
	frActBlackhole = 6
)

func (r policyRule) isGuard() bool {
	return r.Protocol == guardProtocol && r.Action == frActBlackhole && r.Src == nil && r.Selectors == "" &&
		r.Dst != nil && (ipNetEqual(r.Dst, imdsNet4) || ipNetEqual(r.Dst, imdsNet6))
}

// isLocal: the kernel's "from all lookup local".
func (r policyRule) isLocal() bool {
	return r.Action == frActToTbl && r.Table == 255 && r.Src == nil && r.Dst == nil && r.Selectors == ""
}

func (r policyRule) isMain() bool {
	return r.Action == frActToTbl && r.Table == 254 && r.Src == nil && r.Dst == nil && r.Selectors == ""
}

func (r policyRule) String() string {
	s := fmt.Sprintf("%d: from %v to %v", r.Pref, nilAll(r.Src), nilAll(r.Dst))
	if r.Selectors != "" {
		s += " matching " + r.Selectors
	}
	switch r.Action {
	case frActToTbl:
		s += fmt.Sprintf(" lookup %d", r.Table)
	case frActBlackhole:
		s += " blackhole"
	default:
		s += fmt.Sprintf(" action %d", r.Action)
	}
	return s
}

func nilAll(n *net.IPNet) string {
	if n == nil {
		return "all"
	}
	return n.String()
}

func guardFirst(rules []policyRule) bool { return len(rules) > 0 && rules[0].isGuard() }

// familyPath is the kernel's answer for one family in one namespace.
type familyPath struct {
	Guard  bool
	Escape string
}

// judgePath decides whether a packet to IMDS is refused, from the route
// lookups' escapes (one per source tried), the policy rules in order, and
// the tos-specific routes that cover IMDS. With the guard first nothing
// else can matter. Without it, the lookups speak for every packet only if
// no rule the packet meets before its final lookup matches on a key the
// lookups did not vary (fwmark, uid, ports...) and no route is chosen by
// tos: those are reported as escapes, since unknown is not blocked. A
// lookup that leaves is an escape even with the guard first.
func judgePath(rules []policyRule, escapes []string, mainBlackhole bool, tos string) familyPath {
	p := familyPath{Guard: guardFirst(rules)}
	if len(escapes) > 0 {
		// Whatever the rules say: a lookup that leaves is never blocked.
		p.Escape = "a route lookup reaches IMDS: " + strings.Join(escapes, "; ")
		return p
	}
	if p.Guard {
		return p
	}
	for _, r := range rules {
		if r.isGuard() || (mainBlackhole && r.isMain()) {
			break
		}
		if r.Selectors != "" && r.Action != frActBlackhole {
			return familyPath{Escape: fmt.Sprintf("policy rule %q matches on %s, which no route lookup can rule out", r.String(), r.Selectors)}
		}
	}
	if tos != "" {
		return familyPath{Escape: tos}
	}
	return familyPath{}
}

// tosRoutes names a route chosen by tos that covers dst and sends: a
// lookup without tos never meets it.
func tosRoutes(routes []routeInfo, dst *net.IPNet) string {
	for _, r := range routes {
		if r.tos != 0 && !r.blackhole && (r.dst == nil || r.dst.Contains(dst.IP)) {
			return fmt.Sprintf("route to %v tos %#x in table %d reaches IMDS for packets with that tos, which no route lookup here tests", nilAll(r.dst), r.tos, r.table)
		}
	}
	return ""
}

type routeInfo struct {
	dst       *net.IPNet
	blackhole bool
	priority  int
	table     int
	tos       int
}

type addrInfo struct {
	ip     net.IP
	global bool
}

func ipNetEqual(a, b *net.IPNet) bool {
	if a == nil || b == nil {
		return a == b
	}
	ao, ab := a.Mask.Size()
	bo, bb := b.Mask.Size()
	return a.IP.Equal(b.IP) && ao == bo && ab == bb
}

// blackholed reports whether dst is blackholed in the main table: a
// blackhole for exactly dst, and no other route for dst with an equal or
// better metric (which would win).
func blackholed(routes []routeInfo, dst *net.IPNet) bool {
	best, other := -1, -1
	for _, r := range routes {
		if !ipNetEqual(r.dst, dst) {
			continue
		}
		if r.blackhole {
			if best < 0 || r.priority < best {
				best = r.priority
			}
		} else if other < 0 || r.priority < other {
			other = r.priority
		}
	}
	return best >= 0 && (other < 0 || best < other)
}

var (
	linkLocal6 = &net.IPNet{IP: net.ParseIP("fe80::"), Mask: net.CIDRMask(64, 128)}
	loopback6  = &net.IPNet{IP: net.IPv6loopback, Mask: net.CIDRMask(128, 128)}
)

func hasIPv6(routes []routeInfo, addrs []addrInfo) bool {
	for _, a := range addrs {
		if a.global && !a.ip.IsLoopback() && !a.ip.IsLinkLocalUnicast() {
			return true
		}
	}
	for _, r := range routes {
		if r.dst == nil { // a default route
			return true
		}
		if ipNetEqual(r.dst, linkLocal6) || ipNetEqual(r.dst, loopback6) || ipNetEqual(r.dst, imdsNet6) {
			continue
		}
		return true
	}
	return false
}

var (
	imdsNet4 = &net.IPNet{IP: net.ParseIP("169.254.169.254").To4(), Mask: net.CIDRMask(32, 32)}
	imdsNet6 = &net.IPNet{IP: net.ParseIP("fd00:ec2::254"), Mask: net.CIDRMask(128, 128)}
)

// AWSVPCStatus is every awsvpc task on the host and its IMDS routes.
type AWSVPCStatus struct {
	Mode  string       `json:"mode"`
	Tasks []AWSVPCTask `json:"tasks"`
	// Error says why namespaces are not checked at all; containers are
	// then judged by the ECS setting alone.
	Error string `json:"error,omitempty"`
}

// AWSVPCTask is one task's network namespace.
type AWSVPCTask struct {
	TaskARN string `json:"task_arn"`
	Family  string `json:"family,omitempty"`
	// Pause is the pause container's name; Containers join its namespace.
	Pause      string   `json:"pause_container"`
	Containers []string `json:"containers,omitempty"`
	Protected  bool     `json:"protected"`
	Reason     string   `json:"reason"`
	IPv4Route  bool     `json:"ipv4_blackhole"`
	IPv6       bool     `json:"ipv6"`
	IPv6Route  bool     `json:"ipv6_blackhole"`
	// IPv4Guard, IPv6Guard: imdsguard's guard rule is the first policy
	// rule (enforce mode puts it there).
	IPv4Guard bool `json:"ipv4_guard_rule"`
	IPv6Guard bool `json:"ipv6_guard_rule"`
	// Escape says how a packet to IMDS would leave the namespace.
	Escape string `json:"escape,omitempty"`
	// NetAdmin names the task's containers that can delete the routes.
	NetAdmin []string `json:"net_admin,omitempty"`
	Exempt   string   `json:"exempt,omitempty"`
	// Added are the routes this sync added (a retrofit or a repair).
	Added []string `json:"added,omitempty"`
	Error string   `json:"error,omitempty"`
	// NFTables is layer 1 in the task's namespace (enforce mode only).
	NFTables *firewall.NFTState `json:"nftables,omitempty"`
}

// awsvpcTask groups a pause container with the containers that join it.
type awsvpcTask struct {
	pause   Container
	members []Container
}

// awsvpcTasks finds every pause container and what joins its namespace,
// following container:<id> chains.
func awsvpcTasks(containers []Container) []*awsvpcTask {
	idx := newIndex(containers)
	byPause := map[string]*awsvpcTask{}
	var out []*awsvpcTask
	for _, c := range containers {
		if class, _ := modeClass(c); class == ModeAWSVPC {
			t := &awsvpcTask{pause: c}
			byPause[c.ID] = t
			out = append(out, t)
		}
	}
	for _, c := range containers {
		if class, _ := modeClass(c); class != ModeContainer {
			continue
		}
		if o, ok := idx.owner(c); ok {
			if t := byPause[o.ID]; t != nil {
				t.members = append(t.members, c)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].pause.Name < out[j].pause.Name })
	return out
}

// nsPath is where a container's network namespace can be opened: Docker's
// SandboxKey bind mount, else the pid's. Host mode's key ends in "default"
// and names the host's namespace, so it is never used.
func nsPath(d Details) string {
	if d.SandboxKey != "" && !strings.HasSuffix(d.SandboxKey, "/default") {
		return d.SandboxKey
	}
	if d.Pid > 0 {
		return fmt.Sprintf("/proc/%d/ns/net", d.Pid)
	}
	return ""
}

// awsvpc checks (and in enforce mode, repairs) every awsvpc task's
// blackhole routes. It returns the status, each task and the namespace
// worth watching by pause container ID.
func (a *Agent) awsvpc(ctx context.Context, containers []Container, exempt map[string]string, enforce bool) (AWSVPCStatus, map[string]AWSVPCTask, map[string]string) {
	mode := a.cfg.AWSVPCMode
	if mode == "" {
		mode = ECSModeCheck
	}
	st := AWSVPCStatus{Mode: mode, Tasks: []AWSVPCTask{}}
	watch := map[string]string{}
	byPause := map[string]AWSVPCTask{}
	if _, ok := a.docker.(Inspector); !ok || a.namespaces == nil {
		st.Error = "network namespaces cannot be checked here (no inspecting Docker client or no netlink)"
		return st, byPause, watch
	}
	for _, t := range awsvpcTasks(containers) {
		task := AWSVPCTask{
			TaskARN: t.pause.Labels[LabelTaskARN], Family: t.pause.Labels[LabelTaskFamily],
			Pause: t.pause.Name, Exempt: exempt[t.pause.ID],
		}
		for _, m := range t.members {
			task.Containers = append(task.Containers, m.Name)
		}
		a.checkTask(ctx, t, &task, enforce && mode == ECSModeEnforce, watch)
		st.Tasks = append(st.Tasks, task)
		byPause[t.pause.ID] = task
	}
	return st, byPause, watch
}

func (a *Agent) checkTask(ctx context.Context, t *awsvpcTask, task *AWSVPCTask, enforce bool, watch map[string]string) {
	fail := func(err error) {
		task.Error = err.Error()
		task.Reason = "awsvpc task: cannot check its network namespace: " + err.Error()
	}
	insp := a.docker.(Inspector)
	det, err := insp.Inspect(ctx, t.pause.ID)
	if err != nil {
		fail(err)
		return
	}
	if det.NetAdmin {
		task.NetAdmin = append(task.NetAdmin, t.pause.Name)
	}
	for _, m := range t.members {
		// A member that cannot be inspected is reported as able to delete
		// the routes: unknown is not safe.
		if d, err := insp.Inspect(ctx, m.ID); err != nil || d.NetAdmin {
			task.NetAdmin = append(task.NetAdmin, m.Name)
		}
	}
	path := nsPath(det)
	if path == "" {
		fail(errors.New("Docker reports no namespace path or pid for the pause container"))
		return
	}
	r, err := a.namespaces.Routes(path)
	if byPid := fmt.Sprintf("/proc/%d/ns/net", det.Pid); err != nil && !errors.Is(err, ErrHostNamespace) && det.Pid > 0 && path != byPid {
		// Docker's netns directory may not be visible here (an agent in a
		// container without it mounted); the pid's link always is.
		var err2 error
		if r, err2 = a.namespaces.Routes(byPid); err2 == nil {
			path, err = byPid, nil
		}
	}
	if err != nil {
		fail(err)
		return
	}
	watch[t.pause.ID] = path
	task.IPv6 = r.HasIPv6 && a.cfg.IPv6
	fams := []firewall.Family{firewall.IPv4}
	if task.IPv6 {
		fams = append(fams, firewall.IPv6)
	}
	if enforce && task.Exempt == "" {
		var missing []firewall.Family
		for _, f := range fams {
			if !r.blocked(f) {
				missing = append(missing, f)
			}
		}
		if len(missing) > 0 {
			err := a.namespaces.Blackhole(path, missing)
			r2, rerr := a.namespaces.Routes(path)
			if rerr == nil {
				r = r2
			}
			a.recordRouteFix(t, missing, errors.Join(err, rerr))
			for _, f := range missing {
				task.Added = append(task.Added, string(f))
			}
			if err := errors.Join(err, rerr); err != nil {
				task.Error = err.Error()
			}
		}
	}
	task.IPv4Route, task.IPv6Route = r.V4Blackhole, r.V6Blackhole
	task.IPv4Guard, task.IPv6Guard = r.V4Guard, r.V6Guard
	// Protected is what the kernel does: every lookup refused, whatever
	// routes say. A lookup that escapes is never called protected.
	var escapes []string
	for _, f := range fams {
		if e := r.Escape(f); e != "" {
			escapes = append(escapes, string(f)+": "+e)
		}
	}
	task.Escape = strings.Join(escapes, "; ")
	task.Protected = len(escapes) == 0
	if enforce && task.Exempt == "" {
		var err error
		if task.NFTables, err = a.taskLayer1(ctx, t.pause.ID, path, task.IPv6); err != nil {
			task.Error = strings.TrimPrefix(task.Error+"; "+err.Error(), "; ")
		}
		// Either the routes or the owned table blocks the whole task: its
		// output drop refuses IMDS whatever the routes and rules say.
		if task.NFTables != nil && task.NFTables.Present {
			task.Protected = true
		}
	}
	a.mu.Lock()
	if task.Protected && r.blocked(firewall.IPv4) && (!task.IPv6 || r.blocked(firewall.IPv6)) {
		a.routesSeen[t.pause.ID] = true
	}
	a.mu.Unlock()
	switch {
	case task.Exempt != "" && task.Protected:
		task.Reason = "awsvpc task, exempt (" + task.Exempt + "), but blackholed all the same: imdsguard never removes a route"
	case task.Exempt != "":
		task.Reason = "awsvpc task, exempt (" + task.Exempt + ")"
	case !task.Protected && !task.IPv4Route && !task.IPv4Guard:
		task.Reason = "awsvpc task: no blackhole route to IMDS in its network namespace; " + task.Escape
	case !task.Protected:
		task.Reason = "awsvpc task: IMDS is reachable from its network namespace despite the blackhole; " + task.Escape
	case task.IPv4Guard:
		task.Reason = "awsvpc task: every route lookup to IMDS in its network namespace is refused (imdsguard's guard rule comes first)"
	default:
		task.Reason = "awsvpc task: every route lookup to IMDS in its network namespace is refused"
	}
	if len(task.NetAdmin) > 0 && task.Exempt == "" {
		fix := "nothing puts them back (--awsvpc-mode check)"
		if enforce {
			fix = "imdsguard puts them back at once"
		}
		verb := "holds"
		if len(task.NetAdmin) > 1 {
			verb = "hold"
		}
		task.Reason += fmt.Sprintf("; %s %s NET_ADMIN and can delete the routes: %s", strings.Join(task.NetAdmin, ", "), verb, fix)
	}
}

// recordRouteFix logs a route the agent added. A route it had already seen
// in place was deleted by someone: that is drift, counted as a repair. A
// task never seen protected (started before ECS_AWSVPC_BLOCK_IMDS, or
// before the agent) is a retrofit.
func (a *Agent) recordRouteFix(t *awsvpcTask, fams []firewall.Family, err error) {
	a.mu.Lock()
	seen := a.routesSeen[t.pause.ID]
	a.mu.Unlock()
	log := a.log.WithFields(logrus.Fields{"task": t.pause.Labels[LabelTaskARN], "pause": t.pause.Name, "families": fams})
	if err != nil {
		log.WithError(err).Error("could not add the IMDS blackhole routes to an awsvpc task")
		return
	}
	if !seen {
		log.Warn("awsvpc task had no IMDS blackhole route; added it")
		return
	}
	log.Warn("repaired drift: an awsvpc task's IMDS blackhole route was deleted; added it back")
	a.mu.Lock()
	a.repairs++
	a.mu.Unlock()
	if a.metrics != nil {
		for _, f := range fams {
			a.metrics.repairs.WithLabelValues(string(f), ReasonAWSVPCRoute).Inc()
		}
	}
}

// ReasonAWSVPCRoute is the repairs_total reason for a deleted task route.
const ReasonAWSVPCRoute = "awsvpc_route_missing"

// watchNamespaces keeps one route watcher per awsvpc namespace: new ones
// start, those of tasks that are gone stop (a watcher's socket would keep a
// dead task's namespace alive).
func (a *Agent) watchNamespaces(ctx context.Context, want map[string]string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, w := range a.watches {
		if want[id] != w.path {
			w.cancel()
			delete(a.watches, id)
		}
	}
	for id := range a.routesSeen {
		if _, ok := want[id]; !ok {
			delete(a.routesSeen, id)
		}
	}
	for id, path := range want {
		if _, ok := a.watches[id]; ok {
			continue
		}
		wctx, cancel := context.WithCancel(ctx)
		a.watches[id] = nsWatch{path: path, cancel: cancel}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			err := a.namespaces.Watch(wctx, path, a.runner.Trigger)
			if wctx.Err() != nil {
				return
			}
			a.log.WithError(err).WithField("pause", short(id)).Debug("route watch ended")
			// The next sync starts a new watcher if the task is still
			// there; until then the periodic resync covers it.
			a.mu.Lock()
			if w, ok := a.watches[id]; ok && w.path == path {
				delete(a.watches, id)
			}
			a.mu.Unlock()
		}()
	}
}

type nsWatch struct {
	path   string
	cancel context.CancelFunc
}
