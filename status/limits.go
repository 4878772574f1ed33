package status

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/net/netutil"
)

// endpoint bounds what the clients of one HTTP endpoint can hold. Anyone on
// the host can connect to the metrics port (a host-network container too),
// so neither endpoint may take file descriptors, memory or goroutines the
// repair needs: past maxConns the listener stops accepting and further
// connections wait in the kernel's backlog, which costs the daemon nothing.
type endpoint struct {
	name     string
	maxConns int
	// readHeader drops a connection that sends no request: idle and
	// slow-header clients are the cheap way to hold a slot.
	readHeader time.Duration
	read       time.Duration
	write      time.Duration
	// idle ends a kept-alive connection between requests.
	idle time.Duration
}

// Prometheus scrapes with one connection per target and a few seconds'
// timeout; 64 leaves room for several scrapers and curls.
var metricsEndpoint = endpoint{
	name: "metrics", maxConns: 64,
	readHeader: 2 * time.Second, read: 5 * time.Second, write: 10 * time.Second, idle: 30 * time.Second,
}

// The status socket also serves pprof: /debug/pprof/profile and /trace
// stream for ?seconds= (30 s by default), and pprof refuses durations past
// the WriteTimeout, so it allows a minute.
var statusEndpoint = endpoint{
	name: "status", maxConns: 32,
	readHeader: 2 * time.Second, read: 10 * time.Second, write: 65 * time.Second, idle: 30 * time.Second,
}

// maxHeaderBytes: our requests are one line and a few headers; the default
// (1 MiB) would let each capped connection buffer that much.
const maxHeaderBytes = 8 << 10

// shutdownGrace lets a request in flight finish when the daemon stops.
const shutdownGrace = 500 * time.Millisecond

// fdReserve is what the repair path may need besides the HTTP endpoints:
// the nf_tables and Docker sockets, three pipes per iptables exec, one
// netlink socket and namespace handle per awsvpc task watched, the ECS
// configuration reads.
const fdReserve = 1024

// serve starts an http.Server for h on l, capped and timed out per e. The
// returned stop closes it within shutdownGrace, whatever clients hold.
func (e endpoint) serve(l net.Listener, h http.Handler, log *logrus.Entry) func() error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: e.readHeader,
		ReadTimeout:       e.read,
		WriteTimeout:      e.write,
		IdleTimeout:       e.idle,
		MaxHeaderBytes:    maxHeaderBytes,
	}
	go serveHTTP(srv, netutil.LimitListener(l, e.maxConns), e.name, log)
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			// A profile still streaming: stopping must not wait for it.
			return errors.Join(err, srv.Close())
		}
		return nil
	}
}

// checkFDLimit raises the soft RLIMIT_NOFILE to the hard limit and makes
// sure the endpoints' caps leave fdReserve for the repair. When they do not,
// it shrinks the caps (the repair matters more than the endpoints) and says
// so in one line: refusing to start would leave the host unprotected.
func checkFDLimit(log *logrus.Entry, eps ...*endpoint) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.WithError(err).Warn("cannot read RLIMIT_NOFILE; the HTTP endpoints keep their connection caps")
		return
	}
	if lim.Cur < lim.Max {
		raised := lim
		raised.Cur = raised.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err == nil {
			lim = raised
		}
	}
	want := uint64(fdReserve)
	for _, e := range eps {
		want += uint64(e.maxConns)
	}
	if lim.Cur >= want {
		return
	}
	caps := fitCaps(lim.Cur, eps)
	log.WithFields(logrus.Fields{"rlimit_nofile": lim.Cur, "want": want}).
		Warnf("RLIMIT_NOFILE %d leaves too little for the repair beside the HTTP endpoints; connection caps lowered to %s (raise LimitNOFILE=)", lim.Cur, caps)
}

// fitCaps shrinks the endpoints' caps to share what limit leaves beyond
// fdReserve, at least 4 each, and describes the result.
func fitCaps(limit uint64, eps []*endpoint) string {
	avail := int64(limit) - fdReserve
	per := int(avail / int64(max(len(eps), 1)))
	desc := ""
	for i, e := range eps {
		e.maxConns = max(min(e.maxConns, per), 4)
		if i > 0 {
			desc += ", "
		}
		desc += fmt.Sprintf("%s %d", e.name, e.maxConns)
	}
	return desc
}
