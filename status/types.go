package status

import (
	"github.com/imdsguard/imdsguard/firewall"
)

// Verdicts, from best to worst.
const (
	VerdictProtected = "protected"
	VerdictDegraded  = "degraded"
	VerdictExposed   = "exposed"
)

// ContainerStatus is one running container as status reports it.
type ContainerStatus struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	NetworkMode string `json:"network_mode"`
	// Protected is true when this container cannot reach IMDS.
	Protected bool   `json:"protected"`
	Reason    string `json:"reason"`
	// Expected marks a container that reaches IMDS by design (the ECS
	// agent): reported, but not counted against the host.
	Expected     bool   `json:"expected,omitempty"`
	TaskARN      string `json:"task_arn,omitempty"`
	ECSContainer string `json:"ecs_container,omitempty"`
}

// AWSVPCStatus is every awsvpc task on the host and its IMDS routes.
type AWSVPCStatus struct {
	Mode  string       `json:"mode"`
	Tasks []AWSVPCTask `json:"tasks"`
	// Error says why namespaces are not checked at all; containers are
	// then judged by the ECS setting alone.
	Error string `json:"error,omitempty"`
}

// AWSVPCTask is one task's network namespace.
type AWSVPCTask struct {
	TaskARN string `json:"task_arn"`
	Family  string `json:"family,omitempty"`
	// Pause is the pause container's name; Containers join its namespace.
	Pause      string   `json:"pause_container"`
	Containers []string `json:"containers,omitempty"`
	Protected  bool     `json:"protected"`
	Reason     string   `json:"reason"`
	IPv4Route  bool     `json:"ipv4_blackhole"`
	IPv6       bool     `json:"ipv6"`
	IPv6Route  bool     `json:"ipv6_blackhole"`
	// IPv4Guard, IPv6Guard: imdsguard's guard rule is the first policy
	// rule (enforce mode puts it there).
	IPv4Guard bool `json:"ipv4_guard_rule"`
	IPv6Guard bool `json:"ipv6_guard_rule"`
	// Escape says how a packet to IMDS would leave the namespace.
	Escape string `json:"escape,omitempty"`
	// NetAdmin names the task's containers that can delete the routes.
	NetAdmin []string `json:"net_admin,omitempty"`
	Exempt   string   `json:"exempt,omitempty"`
	// Added are the routes this sync added (a retrofit or a repair).
	Added []string `json:"added,omitempty"`
	Error string   `json:"error,omitempty"`
	// NFTables is layer 1 in the task's namespace (enforce mode only).
	NFTables *firewall.NFTState `json:"nftables,omitempty"`
}

// HostNetworkStatus is every host-network container and whether it is blocked.
type HostNetworkStatus struct {
	Block bool `json:"block"`
	// Enforcement is "active", "off: ..." or "unavailable: ...".
	Enforcement string          `json:"enforcement"`
	Containers  []HostContainer `json:"containers"`
}

// HostContainer is one host-network container.
type HostContainer struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	TaskARN      string `json:"task_arn,omitempty"`
	ECSContainer string `json:"ecs_container,omitempty"`
	Blocked      bool   `json:"blocked"`
	Cgroup       string `json:"cgroup,omitempty"`
	Reason       string `json:"reason"`
}

// Exemption is one container allowed to reach IMDS, and why.
type Exemption struct {
	ID          string   `json:"id"`
	Name        string   `json:"name"`
	NetworkMode string   `json:"network_mode"`
	Why         string   `json:"why"`
	Applied     bool     `json:"applied"`
	Addresses   []string `json:"addresses,omitempty"`
	// Ports are the bridge ports (host-side veths) the ACCEPTs match.
	Ports []string `json:"ports,omitempty"`
	Note  string   `json:"note,omitempty"`
}

// NFTStatus is layer 1 in status.
type NFTStatus struct {
	Enabled bool `json:"enabled"`
	// Present: both tables read back whole.
	Present bool `json:"present"`
	// Owner: the flags in use and which socket owns the tables.
	Owner     bool   `json:"owner"`
	Persist   bool   `json:"persist"`
	Owned     bool   `json:"owned_by_this_agent"`
	OwnerPort uint32 `json:"owner_port,omitempty"`
	// SurvivesFlush and SurvivesStop say which guarantee the kernel gives:
	// "yes" or "no".
	SurvivesFlush  string   `json:"survives_nft_flush"`
	SurvivesStop   string   `json:"survives_agent_stop"`
	Problems       []string `json:"problems,omitempty"`
	Skipped        []string `json:"skipped,omitempty"`
	BlockedPackets uint64   `json:"blocked_packets"`
	BlockedBytes   uint64   `json:"blocked_bytes"`
	Error          string   `json:"error,omitempty"`
	// DockerNFTables: Docker runs its nftables firewall backend (Docker
	// 29+): no DOCKER-USER exists for Docker's own rules, and layer 1 is
	// the separate table Docker's documentation asks users to add.
	DockerNFTables bool `json:"docker_nftables_backend,omitempty"`
}
