package attempts

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imdsguard/imdsguard/firewall"
)

// Bounds. QueueSize events wait for the consumer at most (a full queue
// drops and counts); pending events wait at most PendingWait for a table
// that knows their port, cgroup or task, and at most MaxPending of them;
// the last tableHistory tables are kept so an event is judged by the table
// of its own time even when the consumer lags.
const (
	QueueSize    = 4096
	MaxPending   = 1024
	PendingWait  = 3 * time.Second
	tableHistory = 16
)

// Guard is the daemon's attempt pipeline: readers Offer events, the agent
// Publishes owner tables, Run attributes and records.
type Guard struct {
	q        chan Event
	lost     atomic.Uint64
	rec      *Recorder
	portName func(ifindex int) string

	mu      sync.Mutex
	tables  []*Table // oldest first
	version uint64
	newer   chan struct{}

	pending []pendingAttempt // consumer only
}

type pendingAttempt struct {
	a    Attempt
	t    *Table // the table of the packet's time
	src  netip.Addr
	port string
	ev   Event
}

// NewGuard builds the pipeline. portName resolves an interface index to
// its name in the host's namespace ("" when gone).
func NewGuard(rec *Recorder, portName func(int) string) *Guard {
	return &Guard{q: make(chan Event, QueueSize), rec: rec, portName: portName,
		newer: make(chan struct{}, 1), tables: []*Table{{At: time.Time{}}}}
}

// Offer queues an event, or drops and counts it: it never blocks.
func (g *Guard) Offer(ev Event) {
	select {
	case g.q <- ev:
	default:
		g.Lost(1)
	}
}

// Lost counts events that never reached the consumer.
func (g *Guard) Lost(n uint64) {
	g.lost.Add(n)
	g.rec.lost(n)
}

// LostTotal is what Lost counted.
func (g *Guard) LostTotal() uint64 { return g.lost.Load() }

// Publish makes t the owner table from now on. The agent calls it after
// every pass, with what that pass saw.
func (g *Guard) Publish(t Table) {
	g.mu.Lock()
	g.version++
	t.Version, t.At = g.version, time.Now()
	g.tables = append(g.tables, &t)
	if len(g.tables) > tableHistory {
		g.tables = g.tables[len(g.tables)-tableHistory:]
	}
	g.mu.Unlock()
	g.rec.prune(&t)
	select {
	case g.newer <- struct{}{}:
	default:
	}
}

// tableAt is the last table published at or before at.
func (g *Guard) tableAt(at time.Time) *Table {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i := len(g.tables) - 1; i > 0; i-- {
		if !g.tables[i].At.After(at) {
			return g.tables[i]
		}
	}
	return g.tables[0]
}

func (g *Guard) latest() *Table {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.tables[len(g.tables)-1]
}

// Run consumes events until ctx ends.
func (g *Guard) Run(ctx context.Context) {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			g.rec.flush(time.Now())
			return
		case ev := <-g.q:
			g.handle(ev)
		case <-g.newer:
			g.retry(time.Now())
		case now := <-tick.C:
			g.retry(now)
			g.rec.maybeFlush(now)
		}
	}
}

func (g *Guard) handle(ev Event) {
	port := ""
	if ev.Namespace == "" && ev.PhysInDev > 0 && g.portName != nil {
		port = g.portName(ev.PhysInDev)
	}
	t := g.tableAt(ev.At)
	a, decided := attribute(ev, t, port)
	if decided {
		g.rec.record(a)
		return
	}
	pkt, _ := ParsePacket(ev.Payload)
	if len(g.pending) >= MaxPending {
		g.rec.record(expire(a, t, pkt.Src))
		return
	}
	g.pending = append(g.pending, pendingAttempt{a: a, t: t, src: pkt.Src, port: port, ev: ev})
}

// retry judges pending attempts against the latest table by their
// lifelong keys only (never by address: that is what may have changed
// hands), and expires those that waited too long.
func (g *Guard) retry(now time.Time) {
	if len(g.pending) == 0 {
		return
	}
	latest := g.latest()
	keep := g.pending[:0]
	for _, p := range g.pending {
		if p.port != "" || p.ev.Namespace != "" || p.a.Rule == string(firewall.WhereCgroup) {
			if a, decided := attribute(p.ev, latest, p.port); decided && a.Attributed {
				g.rec.record(a)
				continue
			}
		}
		if now.Sub(p.a.At) >= PendingWait {
			g.rec.record(expire(p.a, p.t, p.src))
			continue
		}
		keep = append(keep, p)
	}
	clear(g.pending[len(keep):])
	g.pending = keep
}
