package firewall

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/godbus/dbus/v5"
)

// firewalld's well-known name on the system bus, also the interface of its
// Reloaded signal.
const firewalldName = "org.fedoraproject.FirewallD1"

// firewalldStartWait bounds the wait for a firewalld that has just taken
// its bus name to answer; past it the sync is triggered anyway.
const firewalldStartWait = time.Minute

// WatchFirewalld calls changed after firewalld has rebuilt its rules, which
// with its iptables backend wipes every iptables chain, ours and Docker's
// (with its nftables backend a restart under Docker 28 did too, in the
// e2e soak). Docker listens to the same two events to re-create its own
// chains:
//
//   - the Reloaded signal, sent once `firewall-cmd --reload` or
//     --complete-reload has finished;
//   - the name changing owner: firewalld stopping (it removed its rules
//     just before) or starting. A starting firewalld takes its name before
//     it applies its rules and answers on the bus only once that is done,
//     so changed is called when it first answers a ping.
//
// On iptables-nft the nf_tables watch already sees every one of those
// changes as it happens; on iptables-legacy nothing else tells us, and
// this is the only prompt trigger besides the periodic resync.
//
// It calls changed once subscribed (a reload before that sent us nothing),
// and returns when ctx ends (nil) or the bus connection fails. The bus is
// the system bus ($DBUS_SYSTEM_BUS_ADDRESS, else the standard socket); a
// host without firewalld still has one, and the watch then waits for
// firewalld to appear.
func WatchFirewalld(ctx context.Context, changed func()) error {
	conn, err := dbus.ConnectSystemBus(dbus.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("connecting to the system bus: %w", err)
	}
	defer conn.Close()
	for _, match := range [][]dbus.MatchOption{
		{dbus.WithMatchSender(firewalldName), dbus.WithMatchInterface(firewalldName), dbus.WithMatchMember("Reloaded")},
		{dbus.WithMatchSender("org.freedesktop.DBus"), dbus.WithMatchInterface("org.freedesktop.DBus"),
			dbus.WithMatchMember("NameOwnerChanged"), dbus.WithMatchArg(0, firewalldName)},
	} {
		if err := conn.AddMatchSignalContext(ctx, match...); err != nil {
			return fmt.Errorf("subscribing to firewalld's signals: %w", err)
		}
	}
	signals := make(chan *dbus.Signal, 16)
	conn.Signal(signals)
	changed()
	for {
		var sig *dbus.Signal
		select {
		case <-ctx.Done():
			return nil
		case sig = <-signals:
		}
		switch {
		case sig == nil: // the connection closed the channel
			if ctx.Err() != nil {
				return nil
			}
			return errors.New("the system bus connection was lost")
		case sig.Name == firewalldName+".Reloaded":
			changed()
		case sig.Name == "org.freedesktop.DBus.NameOwnerChanged":
			if owner := newOwner(sig); owner == "" {
				changed() // stopped: its rules are gone
			} else {
				go func() {
					// The reply, or its failure, means firewalld's start
					// is over (or it died trying).
					pctx, cancel := context.WithTimeout(ctx, firewalldStartWait)
					defer cancel()
					_ = conn.Object(owner, "/").CallWithContext(pctx, "org.freedesktop.DBus.Peer.Ping", 0).Err
					if ctx.Err() == nil {
						changed()
					}
				}()
			}
		}
	}
}

// newOwner is NameOwnerChanged's third argument: the unique name now
// owning firewalld's name, "" when it was released.
func newOwner(sig *dbus.Signal) string {
	if len(sig.Body) < 3 {
		return ""
	}
	s, _ := sig.Body[2].(string)
	return s
}
