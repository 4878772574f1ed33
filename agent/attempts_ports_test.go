package agent

import (
	"net/netip"
	"testing"

	"github.com/imdsguard/imdsguard/docker"
)

func TestPortsGone(t *testing.T) {
	a, b := netip.MustParseAddr("172.17.0.2"), netip.MustParseAddr("fd00::2")
	ports := map[netip.Addr]docker.BridgePort{a: {Name: "veth1", Bridge: "docker0"}, b: {Name: "veth1", Bridge: "docker0"}}
	two := map[netip.Addr]docker.BridgePort{a: {Name: "veth1"}, b: {Name: "veth2"}}
	for _, tc := range []struct {
		name  string
		ports map[netip.Addr]docker.BridgePort
		links map[string]bool
		gone  bool
	}{
		{"its veth is there", ports, map[string]bool{"veth1": true, "docker0": true}, false},
		{"started again: a new veth", ports, map[string]bool{"veth9": true, "docker0": true}, true},
		{"one of two networks' veths left", two, map[string]bool{"veth2": true}, false},
		{"links unknown", ports, nil, false},
		{"no ports", nil, map[string]bool{}, false},
	} {
		if got := portsGone(tc.ports, tc.links); got != tc.gone {
			t.Errorf("%s: portsGone = %v, want %v", tc.name, got, tc.gone)
		}
	}
}
