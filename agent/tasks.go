package agent

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
	"github.com/imdsguard/imdsguard/tasknet"
)

// The pure part of awsvpc enforcement (TestTaskPlan, TestTaskStatus): which
// task namespaces to read (awsvpcTasks), what each must get from what was
// read (planTasks), and each task's status from what applying that found
// (taskStatus). The reads and repairs are in awsvpc.go.

// awsvpcTask groups a pause container with the containers that join it,
// and what the snapshot says of its network namespace.
type awsvpcTask struct {
	pause   docker.Container
	members []docker.Container
	// path is where its namespace opens; byPid is the pid's link, tried
	// when path cannot be read ("" when it is path or there is no pid).
	path, byPid string
	// netAdmin names the containers that can delete its routes (one that
	// cannot be inspected among them: unknown is not safe).
	netAdmin []string
	// err: the snapshot cannot say where its namespace is.
	err error
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
	for _, t := range out {
		t.locate()
	}
	return out
}

// locate fills in where t's namespace is and who can change its routes.
func (t *awsvpcTask) locate() {
	det, err := details(t.pause)
	if err != nil {
		t.err = err
		return
	}
	if det.NetAdmin {
		t.netAdmin = append(t.netAdmin, t.pause.Name)
	}
	for _, m := range t.members {
		if d, err := details(m); err != nil || d.NetAdmin {
			t.netAdmin = append(t.netAdmin, m.Name)
		}
	}
	t.path = tasknet.NSPath(det.SandboxKey, det.Pid)
	if t.path == "" {
		t.err = errors.New("Docker reports no namespace path or pid for the pause container")
		return
	}
	// Docker's netns directory may not be visible here (an agent in a
	// container without it mounted); the pid's link always is.
	if byPid := tasknet.PidPath(det.Pid); det.Pid > 0 && byPid != t.path {
		t.byPid = byPid
	}
}

// nsRead is one read of a task namespace's routes.
type nsRead struct {
	path   string // the path that answered (the one tried, on error)
	routes tasknet.NSRoutes
	err    error
}

// taskPlan is what every awsvpc task's namespace must get.
type taskPlan struct {
	mode string // --awsvpc-mode
	// repair: this pass puts missing routes back (enforce, mode enforce).
	repair bool
	// unavailable: no namespace can be read here; every task is judged
	// by what the ECS agent applies.
	unavailable bool
	tasks       []taskIntent
}

// taskIntent is one task's part of the plan.
type taskIntent struct {
	task   *awsvpcTask
	exempt string
	read   nsRead
	// fams are the families its namespace must refuse: IPv4, and IPv6
	// when it has IPv6 and imdsguard blocks IPv6.
	fams []firewall.Family
	// blackhole are the families to add; layer1: its own table is ensured.
	blackhole []firewall.Family
	layer1    bool
}

// running are the plan's tasks by pause container ID.
func (p taskPlan) running() map[string]bool {
	out := map[string]bool{}
	for _, in := range p.tasks {
		out[in.task.pause.ID] = true
	}
	return out
}

// ok: the task's namespace was found and read.
func (in taskIntent) ok() bool { return in.task.err == nil && in.read.err == nil }

// planTasks decides, from the reads, which task namespaces get which
// routes. Only a task whose namespace was read is repaired, and a failed
// read never stands for blocked: taskStatus reports it unprotected.
func planTasks(cfg Config, tasks []*awsvpcTask, reads map[string]nsRead, exempt map[string]string, enforce, unavailable bool) taskPlan {
	p := taskPlan{mode: cfg.AWSVPCMode, unavailable: unavailable}
	if p.mode == "" {
		p.mode = ECSModeCheck
	}
	p.repair = enforce && p.mode == ECSModeEnforce
	if unavailable {
		return p
	}
	for _, t := range tasks {
		in := taskIntent{task: t, exempt: exempt[t.pause.ID], read: reads[t.pause.ID]}
		if t.err == nil && in.read.err == nil && in.read.path == "" {
			in.read.err = errors.New("its network namespace was not read") // a read phase that skipped it
		}
		if in.ok() {
			in.fams = []firewall.Family{firewall.IPv4}
			if in.read.routes.HasIPv6 && cfg.IPv6 {
				in.fams = append(in.fams, firewall.IPv6)
			}
			if p.repair && in.exempt == "" {
				for _, f := range in.fams {
					if !in.read.routes.Blocked(f) {
						in.blackhole = append(in.blackhole, f)
					}
				}
				in.layer1 = true
			}
		}
		p.tasks = append(p.tasks, in)
	}
	return p
}

// taskResult is what applying a task's intent found.
type taskResult struct {
	// routes are the namespace's routes after the repair's re-read (the
	// read's when nothing was repaired or the re-read failed).
	routes tasknet.NSRoutes
	// added are the families blackholed; repairErr: that or its re-read
	// failed.
	added     []firewall.Family
	repairErr error
	nft       *firewall.NFTState
	nftErr    error
}

// blockedAll: every family in fams is blocked by routes alone.
func blockedAll(r tasknet.NSRoutes, fams []firewall.Family) bool {
	for _, f := range fams {
		if !r.Blocked(f) {
			return false
		}
	}
	return true
}

// judgeTasks is each task's status, and the section's, from the plan and
// what applying it found, by pause container ID.
func judgeTasks(p taskPlan, results map[string]taskResult) (status.AWSVPCStatus, map[string]status.AWSVPCTask) {
	st := status.AWSVPCStatus{Mode: p.mode, Tasks: []status.AWSVPCTask{}}
	byPause := map[string]status.AWSVPCTask{}
	if p.unavailable {
		st.Error = "network namespaces cannot be checked here (no inspecting Docker client or no netlink)"
		return st, byPause
	}
	for _, in := range p.tasks {
		res, ok := results[in.task.pause.ID]
		if !ok { // nothing applied: the read stands
			res = taskResult{routes: in.read.routes}
		}
		task := taskStatus(in, res, p.repair)
		st.Tasks = append(st.Tasks, task)
		byPause[in.task.pause.ID] = task
	}
	return st, byPause
}

// taskStatus judges one task by what the kernel does: every lookup to IMDS
// refused, whatever the routes say, or the task's own table in place.
func taskStatus(in taskIntent, res taskResult, repair bool) status.AWSVPCTask {
	t := in.task
	task := status.AWSVPCTask{
		TaskARN: t.pause.Labels[docker.LabelTaskARN], Family: t.pause.Labels[docker.LabelTaskFamily],
		Pause: t.pause.Name, Exempt: in.exempt,
	}
	for _, m := range t.members {
		task.Containers = append(task.Containers, m.Name)
	}
	task.NetAdmin = slices.Clone(t.netAdmin)
	if err := errors.Join(t.err, in.read.err); err != nil {
		task.Error = err.Error()
		task.Reason = "awsvpc task: cannot check its network namespace: " + err.Error()
		return task
	}
	task.IPv6 = slices.Contains(in.fams, firewall.IPv6)
	r := res.routes
	for _, f := range res.added {
		task.Added = append(task.Added, string(f))
	}
	if res.repairErr != nil {
		task.Error = res.repairErr.Error()
	}
	task.IPv4Route, task.IPv6Route = r.V4Blackhole, r.V6Blackhole
	task.IPv4Guard, task.IPv6Guard = r.V4Guard, r.V6Guard
	var escapes []string
	for _, f := range in.fams {
		if e := r.Escape(f); e != "" {
			escapes = append(escapes, string(f)+": "+e)
		}
	}
	task.Escape = strings.Join(escapes, "; ")
	task.Protected = len(escapes) == 0
	if in.layer1 {
		task.NFTables = res.nft
		if res.nftErr != nil {
			task.Error = strings.TrimPrefix(task.Error+"; "+res.nftErr.Error(), "; ")
		}
		// Either the routes or the owned table blocks the whole task: its
		// output drop refuses IMDS whatever the routes and rules say.
		if task.NFTables != nil && task.NFTables.Present {
			task.Protected = true
		}
	}
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
		if repair {
			fix = "imdsguard puts them back at once"
		}
		verb := "holds"
		if len(task.NetAdmin) > 1 {
			verb = "hold"
		}
		task.Reason += fmt.Sprintf("; %s %s NET_ADMIN and can delete the routes: %s", strings.Join(task.NetAdmin, ", "), verb, fix)
	}
	return task
}

// taskIssues are what the verdict must name of the tasks, and the errors
// that fail the sync (retried with backoff; often a task that stopped
// mid-sync).
func taskIssues(st status.AWSVPCStatus) (issues, errs []string) {
	for _, t := range st.Tasks {
		if t.Error != "" {
			errs = append(errs, fmt.Sprintf("awsvpc task %s: %s", t.Pause, t.Error))
		}
		if t.Exempt == "" && len(t.NetAdmin) > 0 && st.Mode != ECSModeEnforce {
			issues = append(issues, fmt.Sprintf("awsvpc task %s: %s can delete its IMDS blackhole route and nothing would repair it (--awsvpc-mode check)", t.Pause, strings.Join(t.NetAdmin, ", ")))
		}
	}
	return issues, errs
}
