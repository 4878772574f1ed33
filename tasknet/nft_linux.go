package tasknet

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netns"

	"github.com/imdsguard/imdsguard/firewall"
)

// OpenNFT opens layer 1 in the task namespace at path, never the host's.
func OpenNFT(path string, spec firewall.NFTSpec) (*firewall.NFTLayer, error) {
	h, self, err := foreignNetns(path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	self.Close()
	return firewall.OpenNFT(int(h), spec)
}

// foreignNetns opens the namespace at path and ours, refusing path when it
// is ours: what is done there must never be done to the host.
func foreignNetns(path string) (h, self netns.NsHandle, err error) {
	if path == "" {
		return netns.None(), netns.None(), errors.New("no network namespace")
	}
	if h, err = netns.GetFromPath(path); err != nil {
		return netns.None(), netns.None(), err
	}
	if self, err = netns.Get(); err != nil {
		h.Close()
		return netns.None(), netns.None(), err
	}
	if h.Equal(self) {
		h.Close()
		self.Close()
		return netns.None(), netns.None(), fmt.Errorf("%s: %w", path, ErrHostNamespace)
	}
	return h, self, nil
}
