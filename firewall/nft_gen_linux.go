//go:build linux

package firewall

import (
	"time"

	"github.com/google/nftables"
)

// Skipping the read-back while nothing has been committed. The kernel bumps
// a namespace's ruleset generation on every committed transaction, from any
// socket, and only a commit changes a table's chains, rules or flags (the
// one other change, an owner's socket closing, cannot touch tables this
// layer's own open socket owns). So while the generation is the one read
// just before a read-back that found the tables exactly right, they still
// are, and that read can stand in for a new one. Only the counters age:
// the verified read is redone at least every reuse interval, which also
// bounds the trust put in this reasoning. Any error, any problem, a spec
// the old read does not satisfy: the full read.

// nftVerified is a read-back that found nothing wrong, and the generation
// read before it.
type nftVerified struct {
	gen  uint32
	live map[nftables.TableFamily]*nftLive
	at   time.Time
}

// ReuseVerified lets checks skip the read-back while the ruleset generation
// is unchanged since one that verified the tables, redoing it at least
// every maxAge (which is how stale the blocked counters may get). 0: always
// read (the default).
func (l *NFTLayer) ReuseVerified(maxAge time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reuse, l.verified = maxAge, nil
}

// look observes the tables and judges them: from the last verified read
// when nothing has been committed since, else from the kernel.
func (l *NFTLayer) look() (nftObserved, NFTState, error) {
	if o, ok := l.unchanged(); ok {
		if st := l.state(o); len(st.Problems) == 0 {
			return o, st, nil
		}
	}
	l.verified = nil
	gen, genErr := l.k.Gen()
	o, err := l.observe()
	if err != nil {
		return o, NFTState{Flags: l.flags}, err
	}
	st := l.state(o)
	if l.reuse > 0 && genErr == nil && len(st.Problems) == 0 {
		// The same generation after the read: no commit landed during
		// it, so the read is one consistent ruleset.
		if after, err := l.k.Gen(); err == nil && after == gen {
			l.verified = &nftVerified{gen: gen, live: o.live, at: time.Now()}
		}
	}
	return o, st, nil
}

// unchanged returns the last verified read against the current spec if
// the generation has not moved since and it is young enough.
func (l *NFTLayer) unchanged() (nftObserved, bool) {
	v := l.verified
	if v == nil || time.Since(v.at) >= l.reuse {
		return nftObserved{}, false
	}
	if gen, err := l.k.Gen(); err != nil || gen != v.gen {
		return nftObserved{}, false
	}
	want, skipped := l.spec.render(l.resolve)
	for _, t := range want {
		if _, ok := v.live[t.family]; !ok {
			return nftObserved{}, false // a family the read did not cover
		}
	}
	return nftObserved{want: want, skipped: skipped, live: v.live}, true
}
