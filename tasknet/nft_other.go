//go:build !linux

package tasknet

import (
	"github.com/imdsguard/imdsguard/firewall"
)

func OpenNFT(string, firewall.NFTSpec) (*firewall.NFTLayer, error) {
	return firewall.OpenNFT(0, firewall.NFTSpec{})
}
