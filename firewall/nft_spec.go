package firewall

import "fmt"

// Layer 1: imdsguard's own nftables tables.
//
// Layer 2 (IMDS-GUARD in DOCKER-USER) lives where Docker, firewalld and
// every `iptables -F` write. Layer 1 lives in tables nobody else writes:
// `inet imdsguard` and `bridge imdsguard`, created with the owner flag
// (kernel 5.12+) so that only imdsguard's netlink socket can change or
// delete them and `nft flush ruleset` skips them, and with the persist flag
// (kernel 6.9+) so they outlive the agent and the next one takes them over.
// A drop in any base chain is final whatever other tables accept, so
// either layer alone blocks.

// NFTTable is the name of both owned tables.
const NFTTable = "imdsguard"

// ExemptMark is the packet mark bit the bridge chain sets on IMDS frames
// from an exempt container's bridge port, and the forward chain lets
// through. A container cannot forge it: the kernel clears skb marks when a
// packet crosses a veth into another namespace, and frames from any other
// port to IMDS are dropped in the bridge chain before the bit could matter.
const ExemptMark uint32 = 0x00100000

// NFTScope says which base chains the tables hold.
type NFTScope int

const (
	// ScopeHost: the container host. Forwarded and bridged traffic to IMDS
	// is dropped except from exempt bridge ports; locally sent traffic only
	// from the host-network containers' cgroups.
	ScopeHost NFTScope = iota
	// ScopeTask: an awsvpc task's own namespace, where every process is the
	// task: everything it sends to IMDS is dropped (output), so a NET_ADMIN
	// container can neither delete the block nor route around it.
	ScopeTask
)

func (s NFTScope) String() string {
	if s == ScopeTask {
		return "task"
	}
	return "host"
}

// NFTSpec is the desired state of layer 1 in one network namespace.
type NFTSpec struct {
	Scope  NFTScope
	Action Action
	IPv6   bool
	// Exempt are the exempt containers (host scope only), matched by their
	// bridge ports. An exemption without a valid port is not applied: its
	// container stays blocked.
	Exempt []Exemption
	// HostCgroups are cgroup v2 paths of host-network containers to block
	// in output (host scope only). Paths that do not exist when the rules
	// are built are skipped and reported.
	HostCgroups []string
}

// NFTSpecFrom maps layer 2's spec onto layer 1's: the same action,
// exemptions (layer 1 uses their ports, layer 2 ports and addresses) and
// cgroups.
func NFTSpecFrom(s Spec, ipv6 bool) NFTSpec {
	ns := NFTSpec{Scope: ScopeHost, Action: s.Action, IPv6: ipv6, Exempt: s.Exempt}
	if s.Host != nil {
		ns.HostCgroups = s.Host.Cgroups
	}
	return ns
}

// NFTFlags are the table flags the kernel offers, detected at start.
type NFTFlags struct {
	Owner   bool `json:"owner"`
	Persist bool `json:"persist"`
}

func (f NFTFlags) String() string {
	switch {
	case f.Owner && f.Persist:
		return "owner+persist"
	case f.Owner:
		return "owner"
	}
	return "none"
}

// Guarantees says what the flags promise, for status.
func (f NFTFlags) Guarantees() (survivesFlush, survivesStop bool) {
	return f.Owner, !f.Owner || f.Persist
}

// NFTState is the verified state of layer 1 in one namespace.
type NFTState struct {
	// Present is true when both tables exist with every chain and rule the
	// spec asks for, as read back from the kernel.
	Present bool `json:"present"`
	// Owned is true when the tables belong to this agent's socket.
	Owned bool `json:"owned"`
	// OwnerPort is the netlink port id that owns the tables (0: nobody).
	OwnerPort uint32   `json:"owner_port,omitempty"`
	Flags     NFTFlags `json:"flags"`
	// SurvivesFlush: `nft flush ruleset` and `nft delete table` from
	// another process leave the tables whole (owner flag).
	SurvivesFlush bool `json:"survives_nft_flush"`
	// SurvivesStop: the tables stay when the agent exits (persist flag, or
	// no owner flag at all).
	SurvivesStop bool      `json:"survives_agent_stop"`
	Problems     []Problem `json:"problems,omitempty"`
	// Skipped are parts of the spec that could not be rendered (an
	// exemption without a port, a cgroup that no longer exists).
	Skipped []string `json:"skipped,omitempty"`
	// Packets and Bytes are the blocking rules' counters since the tables
	// were last rebuilt.
	Packets uint64 `json:"blocked_packets"`
	Bytes   uint64 `json:"blocked_bytes"`
	Rebuilt bool   `json:"-"`
}

// Layer-1 problem reasons (metric label values: keep them stable).
const (
	ReasonNFTTableMissing  Reason = "nft_table_missing"
	ReasonNFTTableModified Reason = "nft_table_modified"
	ReasonNFTNotOwned      Reason = "nft_not_owned"
	ReasonNFTOwnedByOther  Reason = "nft_owned_by_other"
)

// NFTReasons lists every layer-1 Reason.
var NFTReasons = []Reason{ReasonNFTTableMissing, ReasonNFTTableModified, ReasonNFTNotOwned, ReasonNFTOwnedByOther}

func nftProblem(r Reason, format string, a ...any) Problem {
	return Problem{Family: "nftables", Reason: r, Detail: fmt.Sprintf(format, a...)}
}
