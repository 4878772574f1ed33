package status

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestEndpointCapsConnections: past the cap a client waits in the backlog;
// clients that send nothing are dropped after the read-header timeout,
// which frees the slots.
func TestEndpointCapsConnections(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := endpoint{name: "test", maxConns: 2, readHeader: 300 * time.Millisecond, read: time.Second, write: time.Second, idle: time.Second}
	stop := ep.serve(l, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") }), testLog(t))
	defer stop()
	var idle []net.Conn
	for range ep.maxConns {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	c, err := net.Dial("tcp", l.Addr().String()) // the kernel completes it; the server does not accept
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("answer: %q %v", line, err)
	}
	// Served only once an idle client was dropped.
	if took := time.Since(start); took < ep.readHeader/2 {
		t.Fatalf("served after %v: the cap of %d did not hold", took, ep.maxConns)
	}
	for _, ic := range idle {
		_ = ic.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := ic.Read(make([]byte, 1)); err == nil {
			t.Fatal("an idle client got data")
		}
	}
}

func TestFitCaps(t *testing.T) {
	for _, tc := range []struct {
		limit uint64
		want  string
	}{
		{1024 + 200, "status 32, metrics 64"},
		{1024 + 40, "status 20, metrics 20"},
		{1024, "status 4, metrics 4"},
		{256, "status 4, metrics 4"},
	} {
		s, m := statusEndpoint, metricsEndpoint
		if got := fitCaps(tc.limit, []*endpoint{&s, &m}); got != tc.want {
			t.Errorf("limit %d: %s, want %s", tc.limit, got, tc.want)
		}
	}
}

// TestStatusSocketBornPrivate: the socket has mode 0600 from its creation,
// whatever the process umask, and never a wider one.
func TestStatusSocketBornPrivate(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "status.sock")
	stop, err := serveStatus(path, "", statusEndpoint, http.NotFoundHandler(), testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Fatalf("status socket mode %o, want 600", got)
	}
	if now := syscall.Umask(0); now != 0 {
		t.Fatalf("umask left at %o", now)
	}
}

// TestQueryStatusHoldsNoSlot: a program polling the daemon (the tests, a
// monitoring script) must not fill the socket's cap with kept-alive
// connections.
func TestQueryStatusHoldsNoSlot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "status.sock")
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, `{"verdict":"protected"}`) })
	stop, err := serveStatus(path, "", statusEndpoint, h, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	for i := range 3 * statusEndpoint.maxConns {
		if _, err := QueryStatus(context.Background(), path); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
	}
}
