//go:build linux

package firewall

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/nftables"
)

// nftLive is one table as the kernel reports it.
type nftLive struct {
	flags  uint32
	owner  uint32 // netlink port id of the owner; 0 when unowned
	chains map[string]nftLiveChain
}

type nftLiveChain struct {
	hook, prio int64 // -1 hook: a regular chain
	typ        string
	policy     int64 // -1: none
	rules      []nftLiveRule
}

type nftLiveRule struct {
	key            string
	packets, bytes uint64
}

// nftKernel is what layer 1 needs of nf_tables in one network namespace,
// over one socket that lives as long as the layer: the socket owns what it
// creates. nftConn is the real one; FakeNFT the unit tests' stand-in.
type nftKernel interface {
	// Port is the socket's netlink port id, the owner of what it creates.
	Port() uint32
	// Flags finds which table flags the kernel accepts.
	Flags() (NFTFlags, error)
	// Gen returns the namespace's ruleset generation, which every
	// committed transaction changes, from anyone.
	Gen() (uint32, error)
	// Read returns the table, or nil when there is none.
	Read(fam nftables.TableFamily) (*nftLive, error)
	// Replace, in one transaction, deletes the tables in drop (taking
	// ownership first of those in takeover), then creates each of tables
	// with the flags.
	Replace(tables []nftTableSpec, drop, takeover []nftables.TableFamily, flags uint32) error
	// Delete deletes the tables in one transaction.
	Delete(drop, takeover []nftables.TableFamily, flags uint32) error
	Close() error
}

// NFTLayer keeps layer 1 in one network namespace: the host, or one awsvpc
// task. It holds the socket that owns the tables for as long as it lives;
// Close releases them (with persist they stay, orphaned, until the next
// agent takes them over; without, the kernel deletes them and layer 2 is
// what still blocks).
type NFTLayer struct {
	mu      sync.Mutex
	k       nftKernel
	flags   NFTFlags
	spec    NFTSpec
	resolve cgroupID
	// reuse and verified: see ReuseVerified (nft_gen_linux.go).
	reuse    time.Duration
	verified *nftVerified
}

// newNFTLayer probes the flags once: they do not change while the kernel
// runs.
func newNFTLayer(k nftKernel, spec NFTSpec, resolve cgroupID) (*NFTLayer, error) {
	flags, err := k.Flags()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("probing nf_tables table flags: %w", err), k.Close())
	}
	return &NFTLayer{k: k, flags: flags, spec: spec, resolve: resolve}, nil
}

// Flags returns the table flags in use.
func (l *NFTLayer) Flags() NFTFlags { return l.flags }

// Port is the netlink port id that owns the tables this layer makes.
func (l *NFTLayer) Port() uint32 { return l.k.Port() }

func (l *NFTLayer) wantFlags() uint32 {
	var f uint32
	if l.flags.Owner {
		f |= tableFlagOwn
	}
	if l.flags.Persist {
		f |= tableFlagPer
	}
	return f
}

// SetSpec replaces the desired state; the next Ensure applies it.
func (l *NFTLayer) SetSpec(s NFTSpec) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.spec = s
}

// Spec returns the desired state.
func (l *NFTLayer) Spec() NFTSpec {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.spec
}

// Name is the layer's name in status: "nftables".
func (l *NFTLayer) Name() string { return "nftables" }

// SetIntent renders the intent in the layer's scope.
func (l *NFTLayer) SetIntent(in Intent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.spec = NFTSpec{Scope: l.spec.Scope, Action: in.Action, IPv6: in.IPv6, Exempt: in.Exempt, HostCgroups: in.HostCgroups}
}

// Check is CheckNFT as a Layer.
func (l *NFTLayer) Check(ctx context.Context) (LayerState, error) {
	st, err := l.CheckNFT(ctx)
	return nftLayerState(st), err
}

// Ensure is EnsureNFT as a Layer.
func (l *NFTLayer) Ensure(ctx context.Context) (LayerState, error) {
	st, err := l.EnsureNFT(ctx)
	return nftLayerState(st), err
}

// CheckNFT reads the tables and reports what is wrong, changing nothing.
func (l *NFTLayer) CheckNFT(ctx context.Context) (NFTState, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	o, st, err := l.look()
	if err != nil {
		return st, err
	}
	if !st.Present {
		st = l.daemonState(o, st)
	}
	return st, nil
}

// EnsureNFT rebuilds the tables when anything differs, in one transaction
// (old tables out, new ones in: no moment without the block), and verifies
// the result with a fresh read.
func (l *NFTLayer) EnsureNFT(ctx context.Context) (NFTState, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return NFTState{Flags: l.flags}, err
	}
	o, st, err := l.look()
	if err != nil {
		return st, err
	}
	if len(st.Problems) == 0 {
		return st, nil
	}
	found := st.Problems
	drop, takeover := l.existing(o)
	var errs []error
	if err := l.k.Replace(o.want, drop, takeover, l.wantFlags()); err != nil {
		errs = append(errs, fmt.Errorf("rebuilding the %s tables: %w", NFTTable, err))
	}
	o, st, err = l.look()
	if err != nil {
		return NFTState{Flags: l.flags, Problems: found}, errors.Join(append(errs, fmt.Errorf("verifying: %w", err))...)
	}
	left := st.Problems
	st.Problems, st.Rebuilt = found, len(errs) == 0
	for _, p := range left {
		errs = append(errs, fmt.Errorf("still wrong after repair: %s", p.Detail))
	}
	return st, errors.Join(errs...)
}

// existing lists the tables present, and those of them nobody owns but
// persist keeps (orphans: taken over before they are replaced).
func (l *NFTLayer) existing(o nftObserved) (drop, takeover []nftables.TableFamily) {
	for fam, lt := range o.live {
		if lt == nil {
			continue
		}
		drop = append(drop, fam)
		if l.flags.Owner && lt.flags&(tableFlagOwn|tableFlagPer) == tableFlagPer {
			takeover = append(takeover, fam)
		}
	}
	slices.Sort(drop)
	slices.Sort(takeover)
	return drop, takeover
}

// Remove deletes both tables (whichever exist), taking orphans over first.
// A table another live socket owns cannot be deleted: that agent must stop
// first.
func (l *NFTLayer) Remove(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.verified = nil
	o := nftObserved{live: map[nftables.TableFamily]*nftLive{}}
	var errs []error
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyINet, nftables.TableFamilyBridge} {
		lt, err := l.k.Read(fam)
		if err != nil {
			errs = append(errs, fmt.Errorf("reading table %s %s: %w", familyName(fam), NFTTable, err))
			continue
		}
		if lt != nil && lt.flags&tableFlagOwn != 0 && lt.owner != l.k.Port() {
			errs = append(errs, fmt.Errorf("table %s %s is owned by a running process (netlink port id %d): stop it first", familyName(fam), NFTTable, lt.owner))
			continue
		}
		o.live[fam] = lt
	}
	if drop, takeover := l.existing(o); len(drop) > 0 {
		if err := l.k.Delete(drop, takeover, l.wantFlags()); err != nil {
			errs = append(errs, fmt.Errorf("deleting the %s tables: %w", NFTTable, err))
		}
	}
	return errors.Join(errs...)
}

// Close releases the socket, and with it ownership of the tables.
func (l *NFTLayer) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.verified = nil
	return l.k.Close()
}

var (
	_ Layer = (*NFTLayer)(nil)
	_ Layer = IPTablesLayer{}
)

// RemoveNFT deletes layer 1 in the namespace netnsFd refers to (0: the
// caller's), for `imdsguard remove`: orphans are taken over and deleted; a
// table a live agent owns is refused.
func RemoveNFT(ctx context.Context, netnsFd int) error {
	l, err := OpenNFT(netnsFd, NFTSpec{})
	if err != nil {
		return err
	}
	return errors.Join(l.Remove(ctx), l.Close())
}
