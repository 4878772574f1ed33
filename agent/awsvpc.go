package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/sirupsen/logrus"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
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

// readTasks reads the routes of every task namespace the snapshot locates,
// or takes the last verified read where the namespace's watch vouches for
// it (routewatch.go). A failed read is kept as such: planTasks never
// repairs, and taskStatus never protects, on a read that failed.
func (a *Agent) readTasks(tasks []*awsvpcTask) map[string]nsRead {
	reads := map[string]nsRead{}
	for _, t := range tasks {
		if t.err != nil {
			continue
		}
		id := t.pause.ID
		if v, ok := a.vouched(id, t.path, t.byPid); ok {
			reads[id] = nsRead{path: v.path, routes: v.routes}
			continue
		}
		reads[id] = a.readRoutes(id, t.path, t.byPid)
	}
	return reads
}

// readRoutes reads task id's routes at path, or at the first of fallbacks
// that answers when path fails for another reason than being the host's
// namespace (the read keeps path's error when none does). The watch is
// marked before and the read kept for it to vouch for (routewatch.go).
func (a *Agent) readRoutes(id, path string, fallbacks ...string) nsRead {
	before := a.beforeRead(id)
	read := nsRead{path: path}
	read.routes, read.err = a.namespaces.Routes(path)
	for _, p := range fallbacks {
		if read.err == nil || errors.Is(read.err, tasknet.ErrHostNamespace) {
			break
		}
		if p == "" {
			continue
		}
		if r, err := a.namespaces.Routes(p); err == nil {
			read = nsRead{path: p, routes: r}
		}
	}
	a.afterRead(id, before, read)
	return read
}

// applyTasks adds the blackholes the plan asks for, re-reads the repaired
// namespaces to verify them, and ensures the tasks' own tables. It returns
// what it found by pause container ID, and the namespaces worth watching.
func (a *Agent) applyTasks(ctx context.Context, p taskPlan) (map[string]taskResult, map[string]string) {
	results, watch := map[string]taskResult{}, map[string]string{}
	for _, in := range p.tasks {
		if !in.ok() {
			continue
		}
		id, path := in.task.pause.ID, in.read.path
		watch[id] = path
		res := taskResult{routes: in.read.routes}
		if len(in.blackhole) > 0 {
			err := a.namespaces.Blackhole(path, in.blackhole)
			verify := a.readRoutes(id, path)
			if verify.err == nil {
				res.routes = verify.routes
			}
			res.added, res.repairErr = in.blackhole, errors.Join(err, verify.err)
			a.recordRouteFix(in.task, in.blackhole, res.repairErr)
		}
		if in.layer1 {
			res.nft, res.nftErr = a.taskLayer1(ctx, id, path, slices.Contains(in.fams, firewall.IPv6))
		}
		if blockedAll(res.routes, in.fams) {
			a.mu.Lock()
			a.routesSeen[id] = true
			a.mu.Unlock()
		}
		results[id] = res
	}
	return results, watch
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
