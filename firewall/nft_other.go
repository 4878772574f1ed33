//go:build !linux

package firewall

import (
	"context"
	"errors"
	"time"
)

// errNoNFT: nf_tables exists only on Linux; elsewhere layer 1 cannot open
// and the agent reports it as not in place.
var errNoNFT = errors.New("nftables needs Linux")

// NFTLayer cannot exist off Linux; OpenNFT says so.
type NFTLayer struct{}

func OpenNFT(int, NFTSpec) (*NFTLayer, error)                 { return nil, errNoNFT }
func (*NFTLayer) Name() string                                { return "nftables" }
func (*NFTLayer) Flags() NFTFlags                             { return NFTFlags{} }
func (*NFTLayer) Port() uint32                                { return 0 }
func (*NFTLayer) SetIntent(Intent)                            {}
func (*NFTLayer) CheckNFT(context.Context) (NFTState, error)  { return NFTState{}, errNoNFT }
func (*NFTLayer) EnsureNFT(context.Context) (NFTState, error) { return NFTState{}, errNoNFT }
func (*NFTLayer) Check(context.Context) (LayerState, error)   { return LayerState{}, errNoNFT }
func (*NFTLayer) Ensure(context.Context) (LayerState, error)  { return LayerState{}, errNoNFT }
func (*NFTLayer) Remove(context.Context) error                { return errNoNFT }
func (*NFTLayer) Close() error                                { return nil }
func (*NFTLayer) ReuseVerified(time.Duration)                 {}

func RemoveNFT(context.Context, int) error { return errNoNFT }

func DockerNFTables() (bool, error) { return false, errNoNFT }
