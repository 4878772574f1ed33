package status

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/imdsguard/imdsguard/firewall"
)

// summaryRows caps each list in the one-screen form: reasons, exemption
// notes, and the containers that can reach IMDS or are exempt.
const summaryRows = 15

// WriteText prints the status for a person on one screen, whatever the
// number of containers: the verdict and why, the firewall, the ECS
// setting, counts of the containers by network mode and protection, then
// only the containers that can reach IMDS or are exempt.
func (s *Status) WriteText(w io.Writer) { s.writeText(w, false) }

// WriteTextAll is WriteText with every reason, exemption and container.
func (s *Status) WriteTextAll(w io.Writer) { s.writeText(w, true) }

// capped prints at most summaryRows of n lines (all of them with all),
// then how many it left out.
func capped(w io.Writer, n int, all bool, what string, line func(i int)) {
	shown := n
	if !all {
		shown = min(n, summaryRows)
	}
	for i := range shown {
		line(i)
	}
	if shown < n {
		fmt.Fprintf(w, "  … and %d more %s (--all lists them)\n", n-shown, what)
	}
}

func (s *Status) writeText(w io.Writer, all bool) {
	fmt.Fprintf(w, "imdsguard: %s\n", strings.ToUpper(s.Verdict))
	capped(w, len(s.Reasons), all, "reasons", func(i int) { fmt.Fprintf(w, "  ! %s\n", s.Reasons[i]) })
	fam := func(name string, f FamilyStatus) string {
		switch {
		case f.NotApplicable != "":
			return name + " not applicable (" + f.NotApplicable + ")"
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
	capped(w, len(s.Exemptions), all, "exemptions", func(i int) {
		e := s.Exemptions[i]
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
	})
	s.writeAttempts(w)
	if s.LastSync != nil {
		fmt.Fprintf(w, "last sync: %s, %.1f ms, repairs since start: %d\n",
			s.LastSync.At.Format(time.RFC3339), s.LastSync.DurationMS, s.Repairs)
	}
	s.writeContainers(w, all)
}

// imdsState is a container's IMDS column.
func imdsState(c ContainerStatus) string {
	switch {
	case c.Protected:
		return "blocked"
	case c.Expected:
		return "allowed"
	}
	return "REACHABLE"
}

// writeContainers prints the counts by network mode, then the containers
// that can reach IMDS or are exempt (every one with all).
func (s *Status) writeContainers(w io.Writer, all bool) {
	if len(s.Containers) == 0 {
		return
	}
	type count struct{ total, blocked, allowed, reachable int }
	byMode := map[string]*count{}
	var modes []string
	var shown []ContainerStatus
	for _, c := range s.Containers {
		n := byMode[c.NetworkMode]
		if n == nil {
			n = &count{}
			byMode[c.NetworkMode] = n
			modes = append(modes, c.NetworkMode)
		}
		n.total++
		switch imdsState(c) {
		case "blocked":
			n.blocked++
		case "allowed":
			n.allowed++
		default:
			n.reachable++
		}
		if all || !c.Protected {
			shown = append(shown, c)
		}
	}
	sort.Strings(modes)
	fmt.Fprintf(w, "\n%-13s %6s %8s %8s %10s\n", "NETWORK", "TOTAL", "BLOCKED", "ALLOWED", "REACHABLE")
	for _, m := range modes {
		n := byMode[m]
		fmt.Fprintf(w, "%-13s %6d %8d %8d %10d\n", m, n.total, n.blocked, n.allowed, n.reachable)
	}
	if len(shown) == 0 {
		fmt.Fprintf(w, "\nno container can reach IMDS\n")
		return
	}
	if !all {
		fmt.Fprintf(w, "\ncontainers that can reach IMDS or are allowed to:\n")
	}
	fmt.Fprintf(w, "\n%-14s %-28s %-13s %-9s %s\n", "CONTAINER", "NAME", "NETWORK", "IMDS", "WHY")
	capped(w, len(shown), all, "containers", func(i int) {
		c := shown[i]
		name := c.Name
		if c.ECSContainer != "" && c.ECSContainer != c.Name {
			name += " (" + c.ECSContainer + ")"
		}
		fmt.Fprintf(w, "%-14s %-28s %-13s %-9s %s\n", c.ID, trunc(name, 28), c.NetworkMode, imdsState(c), c.Reason)
	})
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
