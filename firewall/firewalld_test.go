package firewall

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// privateBus starts a dbus-daemon of the test's own (no root needed) and
// points DBUS_SYSTEM_BUS_ADDRESS at it. It returns the address and the
// daemon, which the test may kill.
func privateBus(t *testing.T) (string, *exec.Cmd) {
	t.Helper()
	bin, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Skip("dbus-daemon is not installed (make tools installs it with firewalld)")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "bus.conf")
	sock := filepath.Join(dir, "bus.sock")
	if err := os.WriteFile(conf, []byte(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path=`+sock+`</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
</busconfig>
`), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config-file="+conf, "--nofork", "--nopidfile", "--nosyslog", "--print-address")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("dbus-daemon printed no address: %v", err)
	}
	addr = strings.TrimSpace(addr)
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", addr)
	return addr, cmd
}

// TestWatchFirewalld drives the watch with a stand-in firewalld on a real
// dbus-daemon: its name taken and released, its Reloaded signal, and one
// spoofed by another client. The real firewalld is e2e's (TestFirewalld).
func TestWatchFirewalld(t *testing.T) {
	addr, daemon := privateBus(t)
	var n atomic.Int64
	kick := make(chan struct{}, 64)
	changed := func() {
		n.Add(1)
		kick <- struct{}{}
	}
	// wantCalls waits until changed has been called want times in all.
	wantCalls := func(step string, want int64) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for n.Load() < want {
			select {
			case <-kick:
			case <-deadline:
				t.Fatalf("%s: changed called %d times, want %d", step, n.Load(), want)
			}
		}
		if got := n.Load(); got != want {
			t.Fatalf("%s: changed called %d times, want %d", step, got, want)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- WatchFirewalld(ctx, changed) }()
	wantCalls("subscribed", 1)

	// firewalld starting: it owns the name but is busy applying its rules
	// until it answers the ping, which the interceptor holds back.
	pinged, release := make(chan struct{}, 1), make(chan struct{})
	fw, err := dbus.Connect(addr, dbus.WithIncomingInterceptor(func(m *dbus.Message) {
		if member, _ := m.Headers[dbus.FieldMember].Value().(string); member == "Ping" {
			pinged <- struct{}{}
			<-release
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	// start takes the name and returns how often changed had been called
	// when the ping arrived: the watch has handled every earlier signal by
	// then, since it handles them in order.
	start := func() int64 {
		t.Helper()
		if r, err := fw.RequestName(firewalldName, dbus.NameFlagDoNotQueue); err != nil || r != dbus.RequestNameReplyPrimaryOwner {
			t.Fatalf("taking firewalld's name: %v %v", r, err)
		}
		select {
		case <-pinged:
		case <-time.After(10 * time.Second):
			t.Fatal("the watch did not ping the new owner")
		}
		return n.Load()
	}
	if got := start(); got != 1 {
		t.Fatalf("changed called before firewalld answered: %d times in all", got)
	}
	release <- struct{}{}
	wantCalls("firewalld answered", 2)

	// A Reloaded from anyone but firewalld triggers nothing.
	spoof, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer spoof.Close()
	if err := spoof.Emit("/org/fedoraproject/FirewallD1", firewalldName+".Reloaded"); err != nil {
		t.Fatal(err)
	}
	var id string
	if err := spoof.BusObject().Call("org.freedesktop.DBus.GetId", 0).Store(&id); err != nil {
		t.Fatal(err) // a round trip: the daemon has routed the spoof
	}
	if err := fw.Emit("/org/fedoraproject/FirewallD1", firewalldName+".Reloaded"); err != nil {
		t.Fatal(err)
	}
	// firewalld stopping, then starting again: by the second ping the
	// spoof, the real Reloaded and the release have all been handled.
	if _, err := fw.ReleaseName(firewalldName); err != nil {
		t.Fatal(err)
	}
	if got := start(); got != 4 {
		t.Fatalf("after the spoofed and the real Reloaded and a stop: changed called %d times in all, want 4 (2 before)", got)
	}
	release <- struct{}{}
	wantCalls("firewalld answered again", 5)

	// The bus going away ends the watch with an error.
	_ = daemon.Process.Kill()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a lost bus returned nil")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the watch did not notice the bus was gone")
	}
}

// TestWatchFirewalldNoBus: no bus is an error at once, not a hang.
func TestWatchFirewalldNoBus(t *testing.T) {
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(t.TempDir(), "none"))
	if err := WatchFirewalld(context.Background(), func() {}); err == nil {
		t.Fatal("no bus, no error")
	}
}
