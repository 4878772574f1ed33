package agent

import (
	"context"
	"sync"
	"time"
)

// runner runs one function in one goroutine, however many triggers arrive:
// triggers that come while it runs collapse into one more run. It keeps a
// minimum interval between runs, retries failures with exponential backoff,
// and runs at least every maxInterval. This is kube-proxy's
// BoundedFrequencyRunner, cut to what a single-chain agent needs.
type runner struct {
	fn          func(ctx context.Context) error
	minInterval time.Duration
	maxInterval time.Duration
	retryMin    time.Duration
	retryMax    time.Duration
	kick        chan struct{}
}

func newRunner(fn func(context.Context) error, minInterval, maxInterval time.Duration) *runner {
	retryMax := maxInterval
	if retryMax > 5*time.Second {
		retryMax = 5 * time.Second
	}
	return &runner{
		fn:          fn,
		minInterval: minInterval,
		maxInterval: maxInterval,
		retryMin:    50 * time.Millisecond,
		retryMax:    retryMax,
		kick:        make(chan struct{}, 1),
	}
}

// Trigger asks for a run soon. It never blocks.
func (r *runner) Trigger() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Loop runs fn once at once, then on triggers, retries and the period
// (counted from the start of the last run), until ctx ends.
func (r *runner) Loop(ctx context.Context) {
	var last time.Time
	retry := time.Duration(0)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-r.kick:
			if wait := r.minInterval - time.Since(last); wait > 0 {
				// Too soon: hold the trigger until the interval has passed.
				// The pending kick is consumed, so further kicks coalesce.
				if !sleep(ctx, wait) {
					return
				}
			}
		}
		// Drain a kick that arrived while we waited: this run covers it.
		select {
		case <-r.kick:
		default:
		}
		last = time.Now()
		err := r.fn(ctx)
		// The period runs from start to start: on iptables-legacy it is
		// the only drift detection, so drift must be seen within one
		// period, however long the run that just missed it took.
		next := max(r.maxInterval-time.Since(last), r.minInterval)
		if err != nil {
			retry = min(max(retry*2, r.retryMin), r.retryMax)
			next = retry
		} else {
			retry = 0
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// throttle wraps a trigger so a burst of calls fires it at once and then at
// most once per interval, always once more after the burst: the first event
// is acted on immediately and the last one is never lost.
func throttle(interval time.Duration, fire func()) func() {
	var (
		mu      sync.Mutex
		last    time.Time
		pending bool
	)
	return func() {
		mu.Lock()
		defer mu.Unlock()
		if pending {
			return
		}
		wait := interval - time.Since(last)
		if wait <= 0 {
			last = time.Now()
			fire()
			return
		}
		pending = true
		time.AfterFunc(wait, func() {
			mu.Lock()
			pending, last = false, time.Now()
			mu.Unlock()
			fire()
		})
	}
}
