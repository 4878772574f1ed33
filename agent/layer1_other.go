//go:build !linux

package agent

import (
	"context"

	"github.com/imdsguard/imdsguard/firewall"
)

// exemptPorts: bridge ports are a Linux notion; without them every
// exemption stays blocked in layer 1, which off Linux does not exist.
func (a *Agent) exemptPorts(context.Context, []Container, map[string]string) ([]firewall.NFTExemption, []string) {
	return nil, nil
}

func openTaskNFT(string, firewall.NFTSpec) (*firewall.NFTLayer, error) {
	return firewall.OpenNFT(0, firewall.NFTSpec{})
}
