package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
	"github.com/imdsguard/imdsguard/tasknet"
)

// ForHost builds the agent with the machine's own collaborators: Docker at
// cfg.DockerHost, the host's iptables and nftables, netlink in task
// namespaces. firewallErr, when set, is why layer 2 cannot be used (check
// without privileges still reports what it can read).
func ForHost(cfg Config, log *logrus.Entry, hooks Hooks, version string, firewallErr error) (*Agent, error) {
	d, err := docker.New(cfg.DockerHost, log.WithField("component", "docker"))
	if err != nil {
		return nil, err
	}
	o := Options{
		Config: cfg, Log: log, Docker: d, Hooks: hooks, Version: version,
		WatchNFTables: firewall.WatchNFTables, WatchFirewalld: firewall.WatchFirewalld, NFTables: RealNFT(cfg.Action), TaskNFT: tasknet.OpenNFT,
		Ports: tasknet.BridgePorts{},
	}
	if firewallErr != nil {
		o.Firewall = func() (Firewall, firewall.Backend, error) { return nil, firewall.Backend{}, firewallErr }
	}
	if ns, err := tasknet.NewNamespaces(); err != nil {
		// Without the host's identity no namespace is safe to touch.
		log.WithError(err).Warn("awsvpc task namespaces will not be checked")
	} else {
		o.Namespaces = ns
	}
	return New(o), nil
}

// Remove deletes imdsguard's rules from both layers, for `imdsguard
// remove`; the caller holds the host lock and has seen no daemon answer.
func Remove(ctx context.Context, cfg Config, log *logrus.Entry) error {
	if _, err := status.QueryStatus(ctx, cfg.StatusSocket); err == nil {
		return fmt.Errorf("the daemon is running (it answers on %s): stop it first (systemctl stop imdsguard)", cfg.StatusSocket)
	}
	b, err := firewall.DetectBackend(cfg.IPTablesBackend)
	if err != nil {
		return err
	}
	// Both families, whatever --ipv6 says now: an earlier run may have set
	// up IPv6.
	m, err := firewall.NewManagerFor(b, firewall.Spec{Action: cfg.Action}, firewall.IPv4, firewall.IPv6)
	if err != nil {
		return err
	}
	if err := errors.Join(m.Remove(ctx), firewall.RemoveNFT(ctx, 0)); err != nil {
		return err
	}
	log.WithField("backend", b.Mode).Info("removed the IMDS-GUARD chain, its jumps and the imdsguard nftables tables; containers can reach IMDS again")
	return nil
}

// RequireNetAdmin fails early, with one line, where iptables would fail
// later with a confusing message. It checks the capability, not uid 0, so
// a unit that grants only CAP_NET_ADMIN works.
func RequireNetAdmin() error {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return nil // cannot tell; let iptables speak
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err == nil && caps&(1<<unix.CAP_NET_ADMIN) == 0 {
				return errors.New("needs root (CAP_NET_ADMIN) to read and change iptables")
			}
		}
	}
	return nil
}
