package agent

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
	"github.com/imdsguard/imdsguard/tasknet"
)

// awsvpc tasks own an ENI inside their pause container's network namespace:
// their IMDS traffic never crosses the host's FORWARD chain, so the block
// there is a blackhole route in that namespace, as the ECS CNI plugins add
// with ECS_AWSVPC_BLOCK_IMDS=true.

// Namespaces reads and adds the IMDS blackhole routes of other network
// namespaces. Every method refuses the host's own namespace with
// ErrHostNamespace.
type Namespaces interface {
	Routes(path string) (tasknet.NSRoutes, error)
	// Blackhole adds (or replaces with) blackhole routes to IMDS for fams,
	// and the guard rule that puts a blackhole ahead of every policy rule.
	Blackhole(path string, fams []firewall.Family) error
	// Watch calls changed once subscribed and whenever a route or policy
	// rule in the namespace changes, until ctx ends or the namespace goes
	// away.
	Watch(ctx context.Context, path string, changed func()) error
}

// awsvpcTask groups a pause container with the containers that join it.
type awsvpcTask struct {
	pause   docker.Container
	members []docker.Container
}

// awsvpcTasks finds every pause container and what joins its namespace,
// following container:<id> chains.
func awsvpcTasks(containers []docker.Container) []*awsvpcTask {
	idx := docker.NewIndex(containers)
	byPause := map[string]*awsvpcTask{}
	var out []*awsvpcTask
	for _, c := range containers {
		if class, _ := docker.ModeClass(c); class == docker.ModeAWSVPC {
			t := &awsvpcTask{pause: c}
			byPause[c.ID] = t
			out = append(out, t)
		}
	}
	for _, c := range containers {
		if class, _ := docker.ModeClass(c); class != docker.ModeContainer {
			continue
		}
		if o, ok := idx.Owner(c); ok {
			if t := byPause[o.ID]; t != nil {
				t.members = append(t.members, c)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].pause.Name < out[j].pause.Name })
	return out
}

// awsvpc checks (and in enforce mode, repairs) every awsvpc task's
// blackhole routes. It returns the status, each task and the namespace
// worth watching by pause container ID.
func (a *Agent) awsvpc(ctx context.Context, containers []docker.Container, exempt map[string]string, enforce, canInspect bool) (status.AWSVPCStatus, map[string]status.AWSVPCTask, map[string]string) {
	mode := a.cfg.AWSVPCMode
	if mode == "" {
		mode = ECSModeCheck
	}
	st := status.AWSVPCStatus{Mode: mode, Tasks: []status.AWSVPCTask{}}
	watch := map[string]string{}
	byPause := map[string]status.AWSVPCTask{}
	if !canInspect || a.namespaces == nil {
		st.Error = "network namespaces cannot be checked here (no inspecting Docker client or no netlink)"
		return st, byPause, watch
	}
	for _, t := range awsvpcTasks(containers) {
		task := status.AWSVPCTask{
			TaskARN: t.pause.Labels[docker.LabelTaskARN], Family: t.pause.Labels[docker.LabelTaskFamily],
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

func (a *Agent) checkTask(ctx context.Context, t *awsvpcTask, task *status.AWSVPCTask, enforce bool, watch map[string]string) {
	fail := func(err error) {
		task.Error = err.Error()
		task.Reason = "awsvpc task: cannot check its network namespace: " + err.Error()
	}
	det, err := details(t.pause)
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
		if d, err := details(m); err != nil || d.NetAdmin {
			task.NetAdmin = append(task.NetAdmin, m.Name)
		}
	}
	path := tasknet.NSPath(det.SandboxKey, det.Pid)
	if path == "" {
		fail(errors.New("Docker reports no namespace path or pid for the pause container"))
		return
	}
	r, err := a.namespaces.Routes(path)
	if byPid := tasknet.PidPath(det.Pid); err != nil && !errors.Is(err, tasknet.ErrHostNamespace) && det.Pid > 0 && path != byPid {
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
			if !r.Blocked(f) {
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
	if task.Protected && r.Blocked(firewall.IPv4) && (!task.IPv6 || r.Blocked(firewall.IPv6)) {
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
	log := a.log.WithFields(logrus.Fields{"task": t.pause.Labels[docker.LabelTaskARN], "pause": t.pause.Name, "families": fams})
	if err != nil {
		log.WithError(err).Error("could not add the IMDS blackhole routes to an awsvpc task")
		return
	}
	if !seen {
		log.Warn("awsvpc task had no IMDS blackhole route; added it")
		return
	}
	log.Warn("repaired drift: an awsvpc task's IMDS blackhole route was deleted; added it back")
	for _, f := range fams {
		a.countRepair(string(f), ReasonAWSVPCRoute)
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
			a.log.WithError(err).WithField("pause", docker.Short(id)).Debug("route watch ended")
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

// details is what the snapshot's inspect found of c.
func details(c docker.Container) (docker.Details, error) {
	switch {
	case c.Details != nil:
		return *c.Details, nil
	case c.DetailsErr != "":
		return docker.Details{}, errors.New(c.DetailsErr)
	}
	return docker.Details{}, fmt.Errorf("container %s was not inspected", docker.Short(c.ID))
}
