package firewall

import "context"

// Intent is what every layer enforces, said once: the action, and who is
// let through. Each layer renders it its own way (layer 2 matches exempt
// addresses, layer 1 exempt bridge ports) and reports on its own: either
// alone blocks, so one failing never opens the path while the other holds.
type Intent struct {
	Action Action
	IPv6   bool
	Exempt []Exemption
	// HostCgroups, when non-nil, are the cgroup v2 paths of host-network
	// containers to block. Nil leaves layer 2's host chain alone (no
	// container list to decide from).
	HostCgroups []string
}

// LayerState is one layer's verified state.
type LayerState struct {
	Layer string `json:"layer"`
	// Enforced is true only when a read of the kernel, after any repair,
	// found the layer whole.
	Enforced bool      `json:"enforced"`
	Problems []Problem `json:"problems,omitempty"`
	Packets  uint64    `json:"blocked_packets"`
	Bytes    uint64    `json:"blocked_bytes"`
	Rebuilt  bool      `json:"-"`
	// Detail per layer.
	IPTables []FamilyState `json:"iptables,omitempty"`
	NFT      *NFTState     `json:"nftables,omitempty"`
}

// Layer is one independent enforcement of the IMDS block: the shape of
// tailscale's util/linuxfw (one runner per backend), at the level of
// intent. Implementations: IPTablesLayer (layer 2), NFTLayer (layer 1).
type Layer interface {
	Name() string
	SetIntent(Intent)
	// Ensure repairs and verifies; Check only reads.
	Ensure(ctx context.Context) (LayerState, error)
	Check(ctx context.Context) (LayerState, error)
	// Remove deletes what the layer owns, and nothing else.
	Remove(ctx context.Context) error
}

// IPTablesLayer is layer 2 (IMDS-GUARD, jumped to from FORWARD and DOCKER-USER) as a Layer.
type IPTablesLayer struct{ M *Manager }

func (IPTablesLayer) Name() string { return "iptables" }

// SpecFromIntent is layer 2's rendering of an intent.
func SpecFromIntent(in Intent) Spec {
	s := Spec{Action: in.Action, Exempt: in.Exempt}
	if in.HostCgroups != nil {
		s.Host = &HostSpec{Cgroups: in.HostCgroups}
	}
	return s
}

func (l IPTablesLayer) SetIntent(in Intent) { l.M.SetSpec(SpecFromIntent(in)) }

func iptablesState(fs []FamilyState) LayerState {
	st := LayerState{Layer: "iptables", IPTables: fs, Enforced: len(fs) > 0}
	for _, f := range fs {
		st.Enforced = st.Enforced && f.Enforced
		st.Problems = append(st.Problems, f.Problems...)
		st.Packets += f.Packets
		st.Bytes += f.Bytes
		st.Rebuilt = st.Rebuilt || f.Rebuilt
	}
	return st
}

func (l IPTablesLayer) Ensure(ctx context.Context) (LayerState, error) {
	fs, err := l.M.Ensure(ctx)
	return iptablesState(fs), err
}

func (l IPTablesLayer) Check(ctx context.Context) (LayerState, error) {
	fs, err := l.M.Check(ctx)
	return iptablesState(fs), err
}

func (l IPTablesLayer) Remove(ctx context.Context) error { return l.M.Remove(ctx) }

// nftLayerState wraps layer 1's detail.
func nftLayerState(st NFTState) LayerState {
	return LayerState{Layer: "nftables", Enforced: st.Present, Problems: st.Problems,
		Packets: st.Packets, Bytes: st.Bytes, Rebuilt: st.Rebuilt, NFT: &st}
}
