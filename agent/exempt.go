package agent

import (
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/imdsguard/imdsguard/firewall"
)

// Exemptions let chosen containers reach IMDS. For bridged containers an
// exemption is an ACCEPT for the container's own addresses ahead of the
// block, so the danger is address reuse: Docker hands a dead container's
// address to the next container it starts. What keeps that safe:
//
//   - Exemptions are computed in every sync from the last listing of the
//     running containers only (ContainerList without --all), taken on
//     every Docker event, and the IMDS-GUARD body is replaced atomically,
//     so the sync after the listing that no longer shows a container is
//     the one that removes its ACCEPT. Only that listing is kept.
//   - On exit dockerd marks the container stopped, sends "die", releases
//     the endpoint (a network "disconnect" event) and only then updates the
//     view ContainerList reads (20.10, daemon/monitor.go). The listing "die"
//     triggers may still show the container; a follow-up listing 150 ms
//     after "die" (plus at most the 100 ms event throttle) does not. The
//     address can go to another container only when that one is started,
//     which sends "start" and triggers one more listing; until the old
//     container leaves the list, both claim the address and neither is
//     exempted. What is left is a race of the order of one sync between a
//     new container's first packet and its "start" sync, and only when it
//     is started within that follow-up delay of the old one's exit.
//   - An address that two running containers claim (a stale list) is
//     exempted for neither.
//   - Docker being unreachable drops every exemption: without a list
//     nothing can be shown to be running.

// Exemption is one container allowed to reach IMDS, and why.
type Exemption struct {
	ID          string   `json:"id"`
	Name        string   `json:"name"`
	NetworkMode string   `json:"network_mode"`
	Why         string   `json:"why"`
	Applied     bool     `json:"applied"`
	Addresses   []string `json:"addresses,omitempty"`
	Note        string   `json:"note,omitempty"`
}

// exemptWhy says why c is exempt, or "".
func exemptWhy(cfg Config, c Container) string {
	if cfg.ExemptLabel != "" {
		key, val, hasVal := strings.Cut(cfg.ExemptLabel, "=")
		if v, ok := c.Labels[key]; ok && (!hasVal || v == val) {
			return "label " + cfg.ExemptLabel
		}
	}
	if fam := c.Labels[LabelTaskFamily]; fam != "" && slices.Contains(cfg.ExemptTaskFamilies, fam) {
		return "ECS task family " + fam
	}
	return ""
}

// exemptions decides which running containers may reach IMDS. It returns
// the reasons by container ID (only for exemptions in force), the list for
// status, and the addresses to accept per family.
func exemptions(cfg Config, containers []Container) (map[string]string, []Exemption, map[firewall.Family][]netip.Addr) {
	why := map[string]string{}
	list := []Exemption{}
	addrs := map[firewall.Family][]netip.Addr{}
	holders := map[netip.Addr][]string{}
	for _, c := range containers {
		for _, a := range slices.Concat(c.IPv4, c.IPv6) {
			holders[a.Unmap()] = append(holders[a.Unmap()], c.Name)
		}
	}
	ix := newIndex(containers)
	for _, c := range containers {
		w := exemptWhy(cfg, c)
		if w == "" || c.Name == ECSAgentName {
			continue
		}
		class, _ := modeClass(c)
		e := Exemption{ID: short(c.ID), Name: c.Name, NetworkMode: class, Why: w}
		switch class {
		case ModeNone:
			continue // nothing to reach IMDS with
		case ModeContainer:
			o, ok := ix.owner(c)
			switch {
			case !ok:
				e.Note = "ignored: the container whose network it shares is not running"
			case exemptWhy(cfg, o) == "":
				e.Note = "ignored: it shares the network of " + o.Name + ", which is not exempt; exempt that container instead"
			default:
				e.Note = "shares the network of " + o.Name + ", which is exempt"
			}
		case ModeHost, ModeAWSVPC:
			// Host: not blocked by cgroup. awsvpc: no route is added, and
			// one ECS added is left alone.
			e.Applied = true
			why[c.ID] = w
		default:
			for _, a := range slices.Concat(c.IPv4, c.IPv6) {
				a = a.Unmap()
				if len(holders[a]) > 1 {
					e.Note += "address " + a.String() + " is also claimed by " + strings.Join(holders[a], ", ") + ": not exempted; "
					continue
				}
				fam := firewall.IPv4
				if a.Is6() {
					fam = firewall.IPv6
				}
				if len(firewall.ExemptAddrs(fam, []netip.Addr{a})) == 0 {
					continue
				}
				addrs[fam] = append(addrs[fam], a)
				e.Addresses = append(e.Addresses, a.String())
			}
			e.Note = strings.TrimSuffix(e.Note, "; ")
			if len(e.Addresses) > 0 {
				e.Applied = true
				why[c.ID] = w
			} else if e.Note == "" {
				e.Note = "no address to exempt"
			}
		}
		list = append(list, e)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	return why, list, addrs
}
