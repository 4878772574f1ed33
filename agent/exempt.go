package agent

import (
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
)

// Exemptions let chosen containers reach IMDS. For bridged containers an
// exemption is an ACCEPT ahead of the block for the container's own
// addresses arriving by its own bridge port (host-side veth), so a
// neighbour that takes the address stays blocked. The address is matched
// too, because ports and addresses are both reused: Docker hands a dead container's
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

// labelMatches reports whether labels carry the configured exempt label.
func labelMatches(cfg Config, labels map[string]string) (string, bool) {
	if cfg.ExemptLabel == "" {
		return "", false
	}
	key, val, hasVal := strings.Cut(cfg.ExemptLabel, "=")
	v, ok := labels[key]
	return key, ok && (!hasVal || v == val)
}

// exemptCandidate: c carries what could exempt it, before its image's labels
// are known. The lister reads image labels and bridge ports only for these.
func exemptCandidate(cfg Config, c docker.Container) bool {
	if _, ok := labelMatches(cfg, c.Labels); ok {
		return true
	}
	fam := c.Labels[docker.LabelTaskFamily]
	return fam != "" && slices.Contains(cfg.ExemptTaskFamilies, fam)
}

// exemptWhy says why c is exempt, or else why a label it carries does not
// count. A label counts only when it was set on the container: Docker copies
// an image's LABELs into its containers, so a label the image has with the
// same value may be inherited, and anyone who can push an image could grant
// it. (For ECS containers the agent writes the family label after the task
// definition's dockerLabels; the image check is for containers started by
// other means.)
func exemptWhy(cfg Config, c docker.Container) (why, refused string) {
	inherited := func(key string) (bool, string) {
		if c.ImageLabels == nil {
			return true, "the image's labels could not be read, so the label cannot be shown to be the container's own"
		}
		if iv, ok := c.ImageLabels[key]; ok && iv == c.Labels[key] {
			return true, "the image carries the same label, so the container may only have inherited it"
		}
		return false, ""
	}
	if key, ok := labelMatches(cfg, c.Labels); ok {
		if inh, msg := inherited(key); inh {
			refused = "label " + cfg.ExemptLabel + " ignored: " + msg
		} else {
			return "label " + cfg.ExemptLabel, ""
		}
	}
	if fam := c.Labels[docker.LabelTaskFamily]; fam != "" && slices.Contains(cfg.ExemptTaskFamilies, fam) {
		if inh, msg := inherited(docker.LabelTaskFamily); inh {
			refused = strings.TrimPrefix(refused+"; ", "; ") + "ECS task family " + fam + " ignored: " + msg
		} else {
			return "ECS task family " + fam, ""
		}
	}
	return "", refused
}

func isExempt(cfg Config, c docker.Container) bool {
	w, _ := exemptWhy(cfg, c)
	return w != ""
}

// exemptions decides which running containers may reach IMDS. It returns
// the reasons by container ID (only for exemptions in force), the list for
// status, and what the firewall must let through.
func exemptions(cfg Config, containers []docker.Container) (map[string]string, []status.Exemption, []firewall.Exemption) {
	why := map[string]string{}
	list := []status.Exemption{}
	var spec []firewall.Exemption
	holders := map[netip.Addr][]string{}
	for _, c := range containers {
		for _, a := range slices.Concat(c.IPv4, c.IPv6) {
			holders[a.Unmap()] = append(holders[a.Unmap()], c.Name)
		}
	}
	ix := docker.NewIndex(containers)
	for _, c := range containers {
		if !exemptCandidate(cfg, c) || c.Name == docker.ECSAgentName {
			continue
		}
		class, _ := docker.ModeClass(c)
		w, refused := exemptWhy(cfg, c)
		e := status.Exemption{ID: docker.Short(c.ID), Name: c.Name, NetworkMode: class, Why: w}
		if w == "" {
			if class != docker.ModeNone {
				e.Why, e.Note = "not exempt", refused
				list = append(list, e)
			}
			continue
		}
		switch class {
		case docker.ModeNone:
			continue // nothing to reach IMDS with
		case docker.ModeContainer:
			o, ok := ix.Owner(c)
			switch {
			case !ok:
				e.Note = "ignored: the container whose network it shares is not running"
			case !isExempt(cfg, o):
				e.Note = "ignored: it shares the network of " + o.Name + ", which is not exempt; exempt that container instead"
			default:
				e.Note = "shares the network of " + o.Name + ", which is exempt"
			}
		case docker.ModeHost, docker.ModeAWSVPC:
			// Host: not blocked by cgroup. awsvpc: no route is added, and
			// one ECS added is left alone.
			e.Applied = true
			why[c.ID] = w
		default:
			var notes []string
			byPort := map[string][]netip.Addr{}
			for _, a := range slices.Concat(c.IPv4, c.IPv6) {
				a = a.Unmap()
				if len(holders[a]) > 1 {
					notes = append(notes, "address "+a.String()+" is also claimed by "+strings.Join(holders[a], ", ")+": not exempted")
					continue
				}
				fam := firewall.IPv4
				if a.Is6() {
					fam = firewall.IPv6
				}
				if len(firewall.ExemptAddrs(fam, []netip.Addr{a})) == 0 {
					continue
				}
				// Fail closed: without the container's own bridge port the
				// ACCEPT could only match the address, which a neighbour
				// can take.
				port, ok := c.Ports[a]
				if !ok || !firewall.ValidPort(port.Name) {
					msg := "no bridge port found for " + a.String() + ": not exempted"
					if c.PortErr != "" {
						msg += " (" + c.PortErr + ")"
					}
					notes = append(notes, msg)
					continue
				}
				byPort[port.Name] = append(byPort[port.Name], a)
				e.Addresses = append(e.Addresses, a.String())
			}
			for _, port := range slices.Sorted(maps.Keys(byPort)) {
				spec = append(spec, firewall.Exemption{Container: docker.Short(c.ID), Name: c.Name, Port: port, Addrs: byPort[port]})
				e.Ports = append(e.Ports, port)
			}
			e.Note = strings.Join(notes, "; ")
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
	return why, list, spec
}

// logExemptions writes one warning for every exemption granted or
// withdrawn since the last pass that applied one: an exemption opens the
// path to the instance role's credentials.
func (a *Agent) logExemptions(list []status.Exemption, containers []docker.Container, dockerErr error) {
	now := map[string]status.Exemption{}
	for _, e := range list {
		if e.Applied {
			now[e.ID] = e
		}
	}
	tasks := map[string]string{}
	for _, c := range containers {
		tasks[docker.Short(c.ID)] = c.Labels[docker.LabelTaskARN]
	}
	a.mu.Lock()
	prev := a.granted
	a.granted = now
	a.mu.Unlock()
	for _, id := range slices.Sorted(maps.Keys(now)) {
		e := now[id]
		if _, ok := prev[id]; ok {
			continue
		}
		a.log.WithFields(logrus.Fields{"container": e.Name, "id": e.ID, "task": tasks[id], "reason": e.Why,
			"addresses": strings.Join(e.Addresses, ","), "ports": strings.Join(e.Ports, ",")}).
			Warn("exemption granted: this container may reach IMDS")
	}
	for _, id := range slices.Sorted(maps.Keys(prev)) {
		if _, ok := now[id]; ok {
			continue
		}
		e := prev[id]
		why := "the container no longer runs or no longer qualifies"
		if dockerErr != nil {
			why = "Docker cannot be asked: " + dockerErr.Error()
		}
		a.log.WithFields(logrus.Fields{"container": e.Name, "id": e.ID, "task": tasks[id], "reason": e.Why, "why": why}).
			Warn("exemption withdrawn")
	}
}
