package status

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Publisher holds the daemon's last published status: what GET /status,
// /healthz and /metrics serve. The agent publishes once per sync.
type Publisher struct {
	mu sync.Mutex
	st Status
	// body is st encoded once per sync: on a host with hundreds of
	// containers, encoding on every request cost more CPU than the syncs
	// themselves, and a flood of requests must cost only the copy.
	body     []byte
	failures uint64 // published syncs that were not OK
	m        *metrics
	now      func() time.Time
	extra    []prometheus.Collector // AddCollector (attempts.go)
}

// NewPublisher starts with initial (the status before the first sync).
// families and reasons are the metric label values present from the start.
func NewPublisher(initial Status, version string, families, reasons []string) *Publisher {
	p := &Publisher{st: initial, body: Encode(&initial), now: time.Now}
	p.m = newMetrics(p, version, families, reasons)
	return p
}

// Publish makes st the status every endpoint serves.
func (p *Publisher) Publish(st Status) {
	// Encoded outside the lock that requests take; syncs never overlap.
	body := Encode(&st)
	p.mu.Lock()
	prev := p.st
	p.st, p.body = st, body
	if st.LastSync != nil && !st.LastSync.OK {
		p.failures++
	}
	p.mu.Unlock()
	p.m.observe(&st, &prev)
}

// Status returns the last published status.
func (p *Publisher) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}

func (p *Publisher) snapshot() (Status, uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st, p.failures
}

// Healthy is /healthz: true only while the last sync succeeded recently;
// health means fresh verification, not a live process.
func (p *Publisher) Healthy() (bool, string) {
	st := p.Status()
	return st.Health(p.now())
}

// Encode is the body of GET /status. Status holds only strings, numbers
// and times, so encoding cannot fail.
func Encode(st *Status) []byte {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		b, _ = json.Marshal(map[string]string{"verdict": VerdictDegraded, "error": err.Error()})
	}
	return append(b, '\n')
}

// Endpoints says where the daemon serves.
type Endpoints struct {
	// Socket is the status socket; Group, when set, may read it too.
	Socket, Group string
	// MetricsAddr is Prometheus's address; empty disables it.
	MetricsAddr string
}

// Serve starts the status socket (with pprof) and the metrics endpoint.
// The returned stop closes both.
func Serve(e Endpoints, p *Publisher, log *logrus.Entry) (func() error, error) {
	statusEP, metricsEP := statusEndpoint, metricsEndpoint
	if e.MetricsAddr == "" {
		checkFDLimit(log, &statusEP)
	} else {
		checkFDLimit(log, &statusEP, &metricsEP)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", p.serveJSON)
	mux.HandleFunc("GET /healthz", p.serveHealthz)
	// Profiles for diagnosing a slow sync on a real host; the socket is
	// root's (or one group's) only.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	stopStatus, err := serveStatus(e.Socket, e.Group, statusEP, mux, log)
	if err != nil {
		return nil, err
	}
	if e.MetricsAddr == "" {
		return stopStatus, nil
	}
	stopMetrics, err := serveMetrics(e.MetricsAddr, metricsEP, p.m, p.serveHealthz, log)
	if err != nil {
		return nil, errors.Join(err, stopStatus())
	}
	return func() error { return errors.Join(stopMetrics(), stopStatus()) }, nil
}

func (p *Publisher) serveJSON(w http.ResponseWriter, _ *http.Request) {
	p.mu.Lock()
	b := p.body
	p.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

func (p *Publisher) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	ok, why := p.Healthy()
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintln(w, why)
}

// serveStatus serves h on a unix socket only root can open, or with group
// also that group's members: the status names every container and task on
// the host, and pprof shows the daemon's memory.
func serveStatus(path, group string, ep endpoint, h http.Handler, log *logrus.Entry) (func() error, error) {
	gid := -1
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return nil, fmt.Errorf("--status-group: %w", err)
		}
		if gid, err = strconv.Atoi(g.Gid); err != nil {
			return nil, fmt.Errorf("--status-group %s: gid %q: %w", group, g.Gid, err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("status socket directory: %w", err)
	}
	// A socket left by a crashed daemon would make Listen fail; a live
	// daemon still answering on it means a second instance is starting.
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("another imdsguard daemon answers on %s", path)
	}
	_ = os.Remove(path)
	// Created with its final mode: between a listen and a chmod anyone
	// could connect. The umask is the process's, and nothing else creates
	// files while the daemon starts. With a group the socket is 0660 but
	// still root's group until the chown: nobody else can connect between.
	mask := 0o177
	if gid >= 0 {
		mask = 0o117
	}
	old := unix.Umask(mask)
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if gid >= 0 {
		if err := os.Lchown(path, -1, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("status socket: giving it to group %s: %w", group, err)
		}
	}
	stop := ep.serve(l, h, log)
	return func() error {
		err := stop()
		_ = os.Remove(path)
		return err
	}, nil
}

// serveHTTP serves until Shutdown; anything else that ends it is logged:
// the daemon keeps enforcing without its status or metrics endpoint.
func serveHTTP(srv *http.Server, l net.Listener, what string, log *logrus.Entry) {
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.WithError(err).Errorf("%s endpoint stopped", what)
	}
}
