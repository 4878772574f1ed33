package status

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/imdsguard/imdsguard/firewall"
)

// WriteText prints the status for a person: the verdict, then one line per
// container, so a whole host fits on one screen.
func (s *Status) WriteText(w io.Writer) {
	fmt.Fprintf(w, "imdsguard: %s\n", strings.ToUpper(s.Verdict))
	for _, r := range s.Reasons {
		fmt.Fprintf(w, "  ! %s\n", r)
	}
	fam := func(name string, f FamilyStatus) string {
		switch {
		case !f.Enabled:
			return name + " off"
		case f.Enforced:
			return fmt.Sprintf("%s enforced (%d packets blocked)", name, f.BlockedPackets)
		}
		return name + " NOT enforced"
	}
	fmt.Fprintf(w, "firewall: %s via iptables-%s; %s; %s\n", s.Firewall.Action, s.Firewall.Backend,
		fam("ipv4", s.Firewall.IPv4), fam("ipv6", s.Firewall.IPv6))
	if n := s.Firewall.NFTables; n != nil {
		n.writeText(w)
	}
	ecs := fmt.Sprintf("ECS_AWSVPC_BLOCK_IMDS=%v", s.ECSConfig.AWSVPCBlockIMDS)
	if s.ECSConfig.Config != nil {
		ecs += " (" + s.ECSConfig.Config.Reason + ")"
	}
	switch e := s.ECSConfig; {
	case e.Error != "" && e.Stale:
		ecs = fmt.Sprintf("UNREADABLE: %s; last good read %s", e.Error, e.ReadAt.Format(time.RFC3339))
	case e.Error != "":
		ecs = "UNREADABLE: " + e.Error
	case !e.Present:
		ecs = "no ECS configuration found"
	}
	if s.ECSConfig.RestartNeeded {
		ecs += "; the running ECS agent must be restarted to apply it"
	}
	fmt.Fprintf(w, "ecs: %s\n", ecs)
	if !s.Docker.Reachable {
		fmt.Fprintf(w, "docker: unreachable: %s\n", s.Docker.Error)
	}
	if s.AWSVPC != nil && len(s.AWSVPC.Tasks) > 0 {
		prot := 0
		for _, t := range s.AWSVPC.Tasks {
			if t.Protected {
				prot++
			}
		}
		fmt.Fprintf(w, "awsvpc: %s mode; %d of %d tasks have their blackhole routes\n", s.AWSVPC.Mode, prot, len(s.AWSVPC.Tasks))
	}
	if h := s.HostNetwork; h != nil && (h.Block || len(h.Containers) > 0) {
		fmt.Fprintf(w, "host network: blocking %s\n", h.Enforcement)
	}
	for _, e := range s.Exemptions {
		state := "exempt"
		if !e.Applied {
			state = "not exempt"
		}
		line := fmt.Sprintf("exemption: %s %s (%s)", e.Name, state, e.Why)
		if len(e.Addresses) > 0 {
			line += " for " + strings.Join(e.Addresses, ", ")
		}
		if len(e.Ports) > 0 {
			line += " by bridge port " + strings.Join(e.Ports, ", ")
		}
		if e.Note != "" {
			line += "; " + e.Note
		}
		fmt.Fprintln(w, line)
	}
	if s.LastSync != nil {
		fmt.Fprintf(w, "last sync: %s, %.1f ms, repairs since start: %d\n",
			s.LastSync.At.Format(time.RFC3339), s.LastSync.DurationMS, s.Repairs)
	}
	if len(s.Containers) > 0 {
		fmt.Fprintf(w, "\n%-14s %-28s %-13s %-9s %s\n", "CONTAINER", "NAME", "NETWORK", "IMDS", "WHY")
		for _, c := range s.Containers {
			imds := "blocked"
			if !c.Protected {
				imds = "REACHABLE"
				if c.Expected {
					imds = "allowed"
				}
			}
			name := c.Name
			if c.ECSContainer != "" && c.ECSContainer != c.Name {
				name += " (" + c.ECSContainer + ")"
			}
			fmt.Fprintf(w, "%-14s %-28s %-13s %-9s %s\n", c.ID, trunc(name, 28), c.NetworkMode, imds, c.Reason)
		}
	}
}

func trunc(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

// writeText is layer 1's line in `imdsguard status`.
func (n *NFTStatus) writeText(w io.Writer) {
	state := "NOT in place"
	if n.Present {
		state = fmt.Sprintf("in place (%d packets blocked)", n.BlockedPackets)
	}
	fmt.Fprintf(w, "nftables: table inet %s %s; flags %s; survives nft flush: %s; survives agent stop: %s\n",
		firewall.NFTTable, state, firewall.NFTFlags{Owner: n.Owner, Persist: n.Persist}, n.SurvivesFlush, n.SurvivesStop)
	if n.DockerNFTables {
		fmt.Fprintf(w, "  Docker uses its nftables firewall backend (no DOCKER-USER of its own): this table is what Docker's documentation asks for\n")
	}
	if n.Error != "" {
		fmt.Fprintf(w, "  ! nftables: %s\n", n.Error)
	}
}
