package agent

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/status"
	"github.com/sirupsen/logrus"
)

// sync is one daemon pass: enforce, publish, tell the supervisor.
func (a *Agent) sync(ctx context.Context) error {
	st, err := a.pass(ctx, a.snapshot(ctx), true)
	if ctx.Err() != nil {
		// The daemon is stopping: the pass's reads failed because of the
		// stop, not because anything changed, so its verdict is not
		// published (it would log every stop as exposed). The tables stay.
		return fmt.Errorf("sync cut short by the stop: %w", ctx.Err())
	}
	a.mu.Lock()
	st.Repairs, st.RepairsBy = a.repairs, a.repairCounts()
	ok := st.BlockInPlace()
	firstReady := ok && !a.ready
	if ok {
		a.ready = true
	}
	if err == nil && st.LastSync.OK {
		a.lastOK = st.CheckedAt
	}
	st.LastSync.LastSuccess = a.lastOK
	st.LastSync.StaleAfterS = a.staleAfter().Seconds()
	if !a.ready {
		// Nothing before the first verified enforcement may claim protection.
		st.Verdict = status.VerdictExposed
		st.Reasons = append([]string{"the block has not been verified in place yet"}, st.Reasons...)
	}
	from := a.verdictSeen
	a.verdictSeen = st.Verdict
	a.mu.Unlock()
	a.pub.Publish(st)
	a.logVerdict(from, st)
	if firstReady {
		a.log.WithField("verdict", st.Verdict).Info("IMDS block verified in place")
		if a.hooks.Ready != nil {
			a.hooks.Ready()
		}
	}
	if a.hooks.Alive != nil {
		a.hooks.Alive()
	}
	if err != nil {
		a.log.WithError(err).Warn("sync incomplete; retrying")
	}
	return err
}

// logVerdict writes one line when the verdict changes, so a log shipped off
// the host shows when it became degraded or exposed, and why.
func (a *Agent) logVerdict(from string, st status.Status) {
	if from == st.Verdict {
		return
	}
	if from == "" {
		from = "starting"
	}
	why := "all checks pass"
	if len(st.Reasons) > 0 {
		why = strings.Join(st.Reasons, "; ")
	}
	l := a.log.WithFields(logrus.Fields{"from": from, "to": st.Verdict, "why": why})
	if st.Verdict == status.VerdictProtected {
		l.Info("verdict changed")
		return
	}
	l.Warn("verdict changed")
}

// staleAfter bounds the age of the last successful sync while healthy.
func (a *Agent) staleAfter() time.Duration {
	return max(3*a.cfg.ResyncInterval, 15*time.Second)
}

// Run is the daemon: it serves status and metrics and keeps the block in
// place until ctx ends. Stopping leaves every rule where it is: fail closed.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.runner = newRunner(a.sync, minSyncInterval, a.cfg.ResyncInterval)
	a.ecsView = newECSView()
	a.ecsReader = a.newECSReader(a.cfg.ECSConfigMode == ECSModeEnforce)
	a.ecsRunner = newRunner(a.rereadECS, ecsMinInterval, a.cfg.ResyncInterval)
	if a.source != nil {
		a.view = docker.NewView()
		a.listRunner = newRunner(a.relist, minSyncInterval, a.cfg.ResyncInterval)
	}
	stopServing, err := status.Serve(status.Endpoints{Socket: a.cfg.StatusSocket, Group: a.cfg.StatusGroup, MetricsAddr: a.cfg.MetricsAddr}, a.pub, a.log)
	if err != nil {
		return err
	}
	defer func() { _ = stopServing() }()

	var wg sync.WaitGroup
	a.startAttempts(ctx, &wg)
	a.startECSWatch(ctx, &wg)
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.ecsRunner.Loop(ctx)
	}()
	if a.source != nil {
		wg.Add(2)
		go func() {
			defer wg.Done()
			a.listRunner.Loop(ctx)
		}()
		go func() {
			defer wg.Done()
			// Container churn sends several events per container; each
			// would be a list and a sync. The firewall does not depend on
			// them, so they are throttled; nf_tables changes are not.
			a.source.Watch(ctx, throttle(dockerSyncInterval, a.dockerChanged), a.setDockerErr)
		}()
	}
	a.startFirewalldWatch(ctx, &wg)
	if a.watchNFT != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.watchFirewall(ctx)
		}()
	}
	a.log.WithFields(logrus.Fields{"resync": a.cfg.ResyncInterval, "action": a.cfg.Action, "ipv6": a.cfg.IPv6}).Info("imdsguard running")
	a.mu.Lock()
	a.runCtx = ctx
	a.mu.Unlock()
	syncDone := make(chan struct{})
	go func() {
		defer close(syncDone)
		a.runner.Loop(ctx)
	}()
	<-ctx.Done()
	cancel()
	stopped := make(chan struct{})
	go func() {
		<-syncDone
		wg.Wait()
		a.wg.Wait() // route watchers
		// Release the layer-1 sockets (on a hang, the exit does).
		a.closeLayer1()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(stopGrace):
		a.log.Warnf("a loop did not return within %v of the stop (a hung exec or read); exiting anyway", stopGrace)
	}
	if a.hooks.Stopping != nil {
		a.hooks.Stopping()
	}
	a.log.Info("stopped; IMDS rules left in place")
	return nil
}

// watchFirewall follows nf_tables changes while the backend is nft. On
// legacy there are no notifications and the periodic resync is the poll.
func (a *Agent) watchFirewall(ctx context.Context) {
	for ctx.Err() == nil {
		a.mu.Lock()
		mode := a.backend.Mode
		a.mu.Unlock()
		if mode != "nft" {
			// Until the first sync has detected the backend, look again
			// soon: waiting a whole resync would leave nft drift unwatched.
			wait := a.cfg.ResyncInterval
			if mode == "" {
				wait = 20 * time.Millisecond
			}
			if !sleep(ctx, wait) {
				return
			}
			continue
		}
		err := a.watchNFT(ctx, a.runner.Trigger)
		if ctx.Err() != nil {
			return
		}
		a.log.WithError(err).Warn("nf_tables notifications lost; relying on the periodic resync until they are back")
		a.runner.Trigger()
		if !sleep(ctx, a.cfg.ResyncInterval) {
			return
		}
	}
}

func (a *Agent) setDockerErr(err error) {
	a.mu.Lock()
	changed := (err == nil) != (a.dockerErr == nil) || !a.dockerSeen
	a.dockerErr, a.dockerSeen = err, true
	a.mu.Unlock()
	if changed {
		if err != nil {
			a.log.WithError(err).Warn("Docker unreachable; the firewall is still enforced")
		} else {
			a.log.Info("connected to Docker")
		}
	}
}

// maxListingAge is how old the view's listing may be before syncs refuse
// it. The lister lists at least every resync interval, and each call gives
// up after docker.Timeout; only a stuck lister reaches this.
func (a *Agent) maxListingAge() time.Duration {
	return 2*a.cfg.ResyncInterval + 2*docker.Timeout
}

// relist is the lister loop's body: take a snapshot, store it, and sync if
// it matters. Only this loop (and a one-shot's own snapshot) calls Docker.
func (a *Agent) relist(ctx context.Context) error {
	event := a.view.Begin()
	a.mu.Lock()
	err := a.dockerErr
	a.mu.Unlock()
	// Unless the watch already knows Docker cannot answer.
	s := docker.Snapshot{Err: err, At: time.Now()}
	if err == nil {
		s = a.lister.Take(ctx)
	}
	if a.view.Set(s, event) {
		a.runner.Trigger()
	}
	return s.Err
}

// dockerChanged is the Docker watch's callback: list again, then sync.
func (a *Agent) dockerChanged() {
	a.view.Changed()
	a.listRunner.Trigger()
}
