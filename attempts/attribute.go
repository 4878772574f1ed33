package attempts

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/imdsguard/imdsguard/firewall"
)

// Owner is who a packet is attributed to: a container, and its ECS task
// where the ECS labels name one.
type Owner struct {
	ContainerID  string `json:"container_id"`
	Name         string `json:"container"`
	Image        string `json:"image,omitempty"`
	TaskARN      string `json:"task_arn,omitempty"`
	TaskFamily   string `json:"task_family,omitempty"`
	TaskRevision string `json:"task_revision,omitempty"`
	ECSContainer string `json:"ecs_container,omitempty"`
	NetworkMode  string `json:"network_mode,omitempty"`
	// Port is a bridged container's bridge port, when it was found.
	Port string `json:"port,omitempty"`
}

// Table is who owned what after one of the agent's passes. Every key but
// Addrs is one owner's for the owner's whole life: a bridge port is a veth
// that goes with its container, a cgroup id is never handed out twice, a
// pause container ID is one task's. Addresses are reused.
type Table struct {
	Version uint64
	At      time.Time
	Ports   map[string]Owner     // bridge port name
	Addrs   map[netip.Addr]Owner // bridged containers' addresses
	Cgroups map[uint64]Owner     // host-network containers' cgroup v2 ids
	Tasks   map[string]Owner     // awsvpc tasks by pause container ID
}

// Attempt is one blocked packet, attributed.
type Attempt struct {
	At time.Time `json:"at"`
	Owner
	// Attributed is false when nobody could be named; By says how.
	Attributed bool   `json:"attributed"`
	By         string `json:"by"`
	Family     string `json:"family"`
	Proto      string `json:"protocol"`
	Src        string `json:"source"`
	Dst        string `json:"destination"`
	DstPort    uint16 `json:"destination_port,omitempty"`
	TCPFlags   string `json:"tcp_flags,omitempty"`
	// Token: an IMDSv2 token request (PUT /latest/api/token); absent when
	// the packet cannot tell (a SYN carries no request).
	Token   *bool  `json:"imdsv2_token_request,omitempty"`
	Request string `json:"http_request,omitempty"`
	Rule    string `json:"rule"`
	// TableVersion is the owner table the attempt was judged against.
	TableVersion uint64 `json:"owner_table_version"`
}

// Key is the container an attempt counts for in logs and metrics.
func (a Attempt) Key() string {
	if a.Attributed {
		return a.ContainerID
	}
	return "unattributed " + a.Src
}

// attribute judges ev against t, the table in force when the packet was
// read. port is the name of the bridge port the frame entered by ("" when
// the message names none or it is gone). decided is false when only a later
// table can tell (a port, cgroup or task t does not know yet).
func attribute(ev Event, t *Table, port string) (a Attempt, decided bool) {
	a = Attempt{At: ev.At, TableVersion: t.Version}
	pkt, ok := ParsePacket(ev.Payload)
	if ok {
		a.Family, a.Proto, a.Src, a.Dst, a.DstPort = pkt.Family, pkt.Proto, pkt.Src.String(), pkt.Dst.String(), pkt.DstPort
		a.TCPFlags, a.Token, a.Request = pkt.TCPFlags, pkt.Token, pkt.Request
	}
	where, cg, ok := firewall.ParseNFLogPrefix(ev.Prefix)
	if !ok {
		a.Rule, a.By = ev.Prefix, "not an imdsguard rule"
		return a, true
	}
	a.Rule = string(where)
	own := func(o Owner, by string) (Attempt, bool) {
		a.Owner, a.Attributed, a.By = o, true, by
		return a, true
	}
	switch {
	case ev.Namespace != "":
		if o, ok := t.Tasks[ev.Namespace]; ok {
			return own(o, "task namespace")
		}
		a.By = "task namespace " + ev.Namespace
		return a, false
	case where == firewall.WhereCgroup:
		if o, ok := t.Cgroups[cg]; ok {
			return own(o, fmt.Sprintf("cgroup %d", cg))
		}
		a.By = fmt.Sprintf("cgroup %d", cg)
		return a, false
	}
	if port != "" {
		if o, ok := t.Ports[port]; ok {
			return own(o, "bridge port "+port)
		}
		a.By = "bridge port " + port
		return a, false
	}
	if o, ok := t.Addrs[pkt.Src]; ok && pkt.Src.IsValid() {
		return own(o, "address")
	}
	a.By = "no container had address " + a.Src
	return a, true
}

// expire decides an attempt no table named by its port, cgroup or task
// within the wait: by address in the table of its own time, when that
// address's owner has no known port (the port may have been its own);
// otherwise nobody.
func expire(a Attempt, t *Table, src netip.Addr) Attempt {
	if o, ok := t.Addrs[src]; ok && o.Port == "" && a.Rule != string(firewall.WhereCgroup) && a.Rule != string(firewall.WhereTask) {
		a.Owner, a.Attributed = o, true
		a.By = "address (" + a.By + " unknown)"
		return a
	}
	a.By += ": no container known"
	return a
}
