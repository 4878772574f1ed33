package main

import (
	"os"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/sirupsen/logrus"

	"github.com/imdsguard/imdsguard/agent"
)

// systemdHooks ties the agent loop to systemd's notify protocol
// (systemd/imdsguard.service is Type=notify with WatchdogSec=). Outside
// systemd, NOTIFY_SOCKET is unset and every hook does nothing.
func systemdHooks(log *logrus.Entry) agent.Hooks {
	n := newNotifier(log, time.Now)
	return agent.Hooks{Ready: n.ready, Alive: n.alive, Stopping: n.stopping}
}

type notifier struct {
	log *logrus.Entry
	now func() time.Time
	// enabled is false when systemd is not listening (NOTIFY_SOCKET unset).
	enabled bool
	// minGap is the shortest time between two WATCHDOG=1 messages: half of
	// WATCHDOG_USEC, so a loop that syncs every few seconds does not send a
	// datagram per sync, yet a ping still lands well inside the window.
	// Zero means no watchdog was asked for.
	minGap time.Duration

	readyOnce sync.Once
	mu        sync.Mutex
	lastPing  time.Time
}

func newNotifier(log *logrus.Entry, now func() time.Time) *notifier {
	n := &notifier{log: log, now: now, enabled: os.Getenv("NOTIFY_SOCKET") != ""}
	if !n.enabled {
		return n
	}
	// SdWatchdogEnabled also checks WATCHDOG_PID, so a child process that
	// inherited the variables does not ping on the daemon's behalf.
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.WithError(err).Warn("systemd watchdog settings unreadable; not sending WATCHDOG=1")
	}
	n.minGap = interval / 2
	return n
}

func (n *notifier) send(state string) {
	if !n.enabled {
		return
	}
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.log.WithError(err).WithField("state", state).Warn("sd_notify failed")
	}
}

// ready reports READY=1 once: systemd starts units ordered after us
// (docker.service) only then, so it must follow a verified enforcement.
func (n *notifier) ready() {
	n.readyOnce.Do(func() {
		n.send(daemon.SdNotifyReady + "\nSTATUS=IMDS block in place")
		n.log.Debug("notified systemd: ready")
	})
}

// alive pings the watchdog; a loop that stops calling it gets restarted.
func (n *notifier) alive() {
	if !n.enabled || n.minGap <= 0 {
		return
	}
	now := n.now()
	n.mu.Lock()
	due := n.lastPing.IsZero() || now.Sub(n.lastPing) >= n.minGap
	if due {
		n.lastPing = now
	}
	n.mu.Unlock()
	if due {
		n.send(daemon.SdNotifyWatchdog)
	}
}

func (n *notifier) stopping() {
	n.send(daemon.SdNotifyStopping)
}
