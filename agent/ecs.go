package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/ecsconfig"
	"github.com/imdsguard/imdsguard/status"
)

// ecsRead is what a pass knows of the ECS configuration files: the last
// read and the last good one.
type ecsRead struct {
	last, good ecsFiles
	// daemon: the read is the ECS loop's, whose failure retrying the sync
	// cannot fix.
	daemon bool
}

// readECS takes the ECS loop's last read (the daemon) or, in a one-shot
// command, reads now, bounded the same way.
func (a *Agent) readECS(ctx context.Context, enforce bool) ecsRead {
	if a.ecsView != nil {
		last, good := a.ecsView.get(ctx, a.maxECSAge())
		return ecsRead{last: last, good: good, daemon: true}
	}
	r := ecsRead{last: a.newECSReader(enforce && a.cfg.ECSConfigMode == ECSModeEnforce).get(ctx)}
	if r.last.err == nil {
		r.good = r.last
	}
	return r
}

// ecsStatus evaluates ECS_AWSVPC_BLOCK_IMDS as the ECS agent will see it,
// and as the running agent sees it now (its environment comes with the
// snapshot). It is pure. The daemon reports a failed read as an issue; a
// one-shot command also returns the error.
func ecsStatus(mode string, containers []docker.Container, r ecsRead) (status.ECSStatus, []string, error) {
	st := status.ECSStatus{Mode: mode}
	agent, agentOK := ecsAgent(containers)
	last, good := r.last, r.good
	st.Wrote, st.WriteFailed = last.wrote, last.writeFailed
	st.Present = agentOK
	if last.err != nil {
		// Claim nothing the failed read did not see; show what the last
		// good read saw, marked stale.
		st.Error = last.err.Error()
		if !good.at.IsZero() {
			res := good.res
			st.Config, st.Stale, st.ReadAt = &res, true, good.at
			st.Present = st.Present || good.in.InstanceConfig.Present || good.in.UserConfig.Present || good.in.JSONConfig.Present
		}
		issue := last.err.Error()
		if last.writeFailed {
			issue = "cannot write ECS_AWSVPC_BLOCK_IMDS=true: " + issue
		}
		if st.Stale {
			issue += fmt.Sprintf(" (last good read %s; ECS_AWSVPC_BLOCK_IMDS is not claimed)", good.at.Format(time.RFC3339))
		}
		if r.daemon {
			return st, []string{issue}, nil
		}
		return st, []string{issue}, last.err
	}
	in, res := last.in, last.res
	st.Config, st.ReadAt = &res, last.at
	st.AWSVPCBlockIMDS = res.AWSVPCBlockIMDS
	st.Present = st.Present || in.InstanceConfig.Present || in.UserConfig.Present || in.JSONConfig.Present

	var issues []string
	switch {
	case !agentOK:
		// No ECS agent.
	case agent.EnvErr != "":
		issues = append(issues, "cannot read the running ECS agent's environment: "+agent.EnvErr)
	default:
		run, err := ecsconfig.EvaluateContainerEnv(agent.Env, in.JSONConfig)
		if err != nil {
			issues = append(issues, "cannot evaluate the running ECS agent's setting: "+err.Error())
			break
		}
		st.RunningAgent = &run
		st.RestartNeeded = res.AWSVPCBlockIMDS && !run.AWSVPCBlockIMDS
	}
	switch {
	case !st.Present:
	case st.RestartNeeded:
		issues = append(issues, "ECS_AWSVPC_BLOCK_IMDS is true in the config files but not in the running ECS agent: restart the ECS agent (systemctl restart ecs)")
	case !res.AWSVPCBlockIMDS:
		issues = append(issues, "ECS_AWSVPC_BLOCK_IMDS is not in effect ("+res.Reason+"): awsvpc tasks will reach IMDS")
	}
	return st, issues, nil
}

// ecsAgent finds the ECS agent's container in a listing.
func ecsAgent(containers []docker.Container) (docker.Container, bool) {
	for _, c := range containers {
		if c.Name == docker.ECSAgentName {
			return c, true
		}
	}
	return docker.Container{}, false
}
