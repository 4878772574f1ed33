package main

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// fakeSystemd listens where NOTIFY_SOCKET points, like systemd does.
func fakeSystemd(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return conn
}

// received drains every datagram already sent.
func received(t *testing.T, conn *net.UnixConn) []string {
	t.Helper()
	var msgs []string
	buf := make([]byte, 4096)
	for {
		if err := conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		n, err := conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return msgs
			}
			t.Fatal(err)
		}
		msgs = append(msgs, string(buf[:n]))
	}
}

func testLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(os.Stderr)
	return logrus.NewEntry(l)
}

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// TestSystemdHooksNoSocket: outside systemd (NOTIFY_SOCKET unset) the
// hooks send nothing, ask for no watchdog even when WATCHDOG_USEC says one,
// warn about nothing and return at once.
func TestSystemdHooksNoSocket(t *testing.T) {
	conn := fakeSystemd(t) // a listener that must hear nothing
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "30000000")
	t.Setenv("WATCHDOG_PID", "")
	var warnings countHook
	log := testLog()
	log.Logger.AddHook(&warnings)
	if n := newNotifier(log, time.Now); n.enabled || n.minGap != 0 {
		t.Fatalf("without NOTIFY_SOCKET: enabled %v, watchdog every %v; want neither", n.enabled, n.minGap)
	}
	h := systemdHooks(log)
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.Ready()
		h.Alive()
		h.Alive()
		h.Stopping()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the hooks block without systemd")
	}
	if msgs := received(t, conn); len(msgs) != 0 {
		t.Fatalf("sent %q without NOTIFY_SOCKET", msgs)
	}
	if n := warnings.n.Load(); n != 0 {
		t.Fatalf("%d warnings without systemd", n)
	}
}

// countHook counts log entries at warning level and above.
type countHook struct{ n atomic.Int32 }

func (h *countHook) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel}
}
func (h *countHook) Fire(*logrus.Entry) error { h.n.Add(1); return nil }

func TestSystemdHooksReadyOnce(t *testing.T) {
	conn := fakeSystemd(t)
	t.Setenv("WATCHDOG_USEC", "")
	h := systemdHooks(testLog())
	h.Ready()
	h.Ready()
	h.Alive() // no watchdog configured: nothing sent
	h.Stopping()
	msgs := received(t, conn)
	if len(msgs) != 2 {
		t.Fatalf("got %q, want one READY and one STOPPING", msgs)
	}
	if !strings.Contains(msgs[0], "READY=1") {
		t.Errorf("first message %q lacks READY=1", msgs[0])
	}
	if msgs[1] != "STOPPING=1" {
		t.Errorf("second message %q, want STOPPING=1", msgs[1])
	}
}

func TestSystemdHooksWatchdogRateLimit(t *testing.T) {
	conn := fakeSystemd(t)
	t.Setenv("WATCHDOG_USEC", "30000000") // WatchdogSec=30s
	t.Setenv("WATCHDOG_PID", "")
	clock := &fakeClock{t: time.Unix(1000, 0)}
	n := newNotifier(testLog(), clock.now)
	if n.minGap != 15*time.Second {
		t.Fatalf("minGap = %v, want 15s", n.minGap)
	}
	// A sync every 5s for 60s: pings at 0, 15, 30, 45, 60.
	for i := 0; i <= 12; i++ {
		n.alive()
		clock.t = clock.t.Add(5 * time.Second)
	}
	msgs := received(t, conn)
	if len(msgs) != 5 {
		t.Fatalf("got %d messages %q, want 5 pings", len(msgs), msgs)
	}
	for _, m := range msgs {
		if m != "WATCHDOG=1" {
			t.Errorf("message %q, want WATCHDOG=1", m)
		}
	}
}

func TestSystemdHooksWatchdogOtherPID(t *testing.T) {
	conn := fakeSystemd(t)
	t.Setenv("WATCHDOG_USEC", "30000000")
	t.Setenv("WATCHDOG_PID", "1") // meant for another process
	h := systemdHooks(testLog())
	h.Alive()
	if msgs := received(t, conn); len(msgs) != 0 {
		t.Fatalf("sent %q for a watchdog that belongs to another PID", msgs)
	}
}
