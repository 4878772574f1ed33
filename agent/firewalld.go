package agent

import (
	"context"
	"sync"
	"time"
)

// firewalldRetry is how often a daemon without a system bus looks again.
const firewalldRetry = time.Minute

// startFirewalldWatch follows firewalld's D-Bus signals (Options.
// WatchFirewalld, firewall.WatchFirewalld in the daemon): a reload or a
// restart of firewalld triggers a sync at once. On iptables-legacy nothing
// else announces that firewalld has just wiped the chains; on iptables-nft
// the nf_tables watch sees it too, and the runner folds the two triggers
// into one sync.
func (a *Agent) startFirewalldWatch(ctx context.Context, wg *sync.WaitGroup) {
	if a.watchFirewalld == nil {
		return
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		lost := false
		for ctx.Err() == nil {
			err := a.watchFirewalld(ctx, a.runner.Trigger)
			if ctx.Err() != nil {
				return
			}
			// No system bus is a host without D-Bus (and so without
			// firewalld): say it once, then look again every minute (each
			// look costs a dial and godbus's setup; on an idle host without a
			// bus, looking every resync was 7 % of the agent's CPU). No
			// sync is triggered here: the resync timer runs anyway, and a
			// watch that subscribes again triggers one itself.
			if !lost {
				a.log.WithError(err).Info("firewalld's D-Bus signals are not followed; reloads are seen by the nf_tables watch or the periodic resync")
				lost = true
			} else {
				a.log.WithError(err).Debug("firewalld's D-Bus signals: still not followed")
			}
			if !sleep(ctx, max(a.cfg.ResyncInterval, firewalldRetry)) {
				return
			}
		}
	}()
}
