//go:build linux

package firewall

import (
	"maps"
	"slices"
	"sync"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// FakeNFTNetns is an in-memory nf_tables of one network namespace for unit
// tests, with the ownership rules TestNFTKernelOwnership checks on a real
// kernel: an owned table answers EPERM to every other socket and survives
// their flush ruleset; the owner's close deletes it, or with persist leaves
// it orphaned; a NEWTABLE with the owner flag takes an orphan over; a flag
// the kernel lacks is EOPNOTSUPP. Tests drift it with the operations an
// operator's `nft` would run, from a socket of their own.
type FakeNFTNetns struct {
	mu       sync.Mutex
	kernel   NFTFlags // what the simulated kernel accepts
	tables   map[nftables.TableFamily]*nftLive
	nextPort uint32
	// Commits counts committed transactions, for idempotence checks.
	Commits int
	// Reads counts table reads, to see when a check read the kernel.
	Reads  int
	gen    uint32 // the ruleset generation, bumped by every commit
	genErr error  // what Gen answers instead, when set
}

// commit is the end of one transaction: like the kernel, a new generation.
func (n *FakeNFTNetns) commit() {
	n.Commits++
	n.gen++
}

// FailGen makes every socket's Gen answer err (nil: answer again).
func (n *FakeNFTNetns) FailGen(err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.genErr = err
}

// NewFakeNFTNetns returns an empty namespace on a kernel with these flags.
func NewFakeNFTNetns(kernel NFTFlags) *FakeNFTNetns {
	return &FakeNFTNetns{kernel: kernel, tables: map[nftables.TableFamily]*nftLive{}, nextPort: 100}
}

// FakeNFT is one socket into a FakeNFTNetns.
type FakeNFT struct {
	ns     *FakeNFTNetns
	port   uint32
	closed bool
}

// Socket opens a socket with a port id of its own.
func (n *FakeNFTNetns) Socket() *FakeNFT {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.nextPort++
	return &FakeNFT{ns: n, port: n.nextPort}
}

func (n *FakeNFTNetns) writable(t *nftLive, port uint32) bool {
	return t.flags&tableFlagOwn == 0 || t.owner == port
}

// mine returns the table if port may write it, else the kernel's error.
func (n *FakeNFTNetns) mine(fam nftables.TableFamily, port uint32) (*nftLive, error) {
	t := n.tables[fam]
	if t == nil {
		return nil, unix.ENOENT
	}
	if !n.writable(t, port) {
		return nil, unix.EPERM
	}
	return t, nil
}

// FlushRuleset is `nft flush ruleset` from port: every table it may write goes.
func (n *FakeNFTNetns) FlushRuleset(port uint32) {
	n.mu.Lock()
	defer n.mu.Unlock()
	maps.DeleteFunc(n.tables, func(_ nftables.TableFamily, t *nftLive) bool { return n.writable(t, port) })
	n.commit()
}

// DeleteTable is `nft delete table FAMILY imdsguard` from port.
func (n *FakeNFTNetns) DeleteTable(fam nftables.TableFamily, port uint32) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, err := n.mine(fam, port); err != nil {
		return err
	}
	delete(n.tables, fam)
	n.commit()
	return nil
}

// EditRule replaces the key of rule i of chain (someone's edit), if port
// may write the table.
func (n *FakeNFTNetns) EditRule(fam nftables.TableFamily, chain string, i int, port uint32) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	t, err := n.mine(fam, port)
	if err != nil {
		return err
	}
	t.chains[chain].rules[i].key = "edited"
	n.commit()
	return nil
}

// Count adds traffic to rule i of chain, as the kernel's counter would.
func (n *FakeNFTNetns) Count(fam nftables.TableFamily, chain string, i int, packets, bytes uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	r := &n.tables[fam].chains[chain].rules[i]
	r.packets += packets
	r.bytes += bytes
}

// Table returns a copy of the table, or nil.
func (n *FakeNFTNetns) Table(fam nftables.TableFamily) *nftLive {
	n.mu.Lock()
	defer n.mu.Unlock()
	return cloneLive(n.tables[fam])
}

func cloneLive(t *nftLive) *nftLive {
	if t == nil {
		return nil
	}
	c := &nftLive{flags: t.flags, owner: t.owner, chains: map[string]nftLiveChain{}}
	for name, ch := range t.chains {
		ch.rules = slices.Clone(ch.rules)
		c.chains[name] = ch
	}
	return c
}

func (f *FakeNFT) Port() uint32 { return f.port }

func (f *FakeNFT) Flags() (NFTFlags, error) {
	if f.closed {
		return NFTFlags{}, unix.EBADF
	}
	return f.ns.kernel, nil
}

func (f *FakeNFT) Gen() (uint32, error) {
	if f.closed {
		return 0, unix.EBADF
	}
	f.ns.mu.Lock()
	defer f.ns.mu.Unlock()
	return f.ns.gen, f.ns.genErr
}

func (f *FakeNFT) Read(fam nftables.TableFamily) (*nftLive, error) {
	if f.closed {
		return nil, unix.EBADF
	}
	f.ns.mu.Lock()
	f.ns.Reads++
	f.ns.mu.Unlock()
	return f.ns.Table(fam), nil
}

// accepts reports whether the kernel knows every flag.
func (n *FakeNFTNetns) accepts(flags uint32) bool {
	known := uint32(0)
	if n.kernel.Owner {
		known |= tableFlagOwn
	}
	if n.kernel.Persist {
		known |= tableFlagPer
	}
	return flags&^known == 0
}

// transaction checks everything first and changes nothing on error, like
// one nf_tables batch.
func (f *FakeNFT) transaction(tables []nftTableSpec, drop, takeover []nftables.TableFamily, flags uint32) error {
	n := f.ns
	n.mu.Lock()
	defer n.mu.Unlock()
	if f.closed {
		return unix.EBADF
	}
	if !n.accepts(flags) {
		return unix.EOPNOTSUPP
	}
	for _, fam := range takeover {
		t := n.tables[fam]
		if t == nil {
			return unix.ENOENT
		}
		if t.flags&(tableFlagOwn|tableFlagPer) != tableFlagPer || flags&tableFlagPer == 0 {
			return unix.EOPNOTSUPP
		}
	}
	for _, fam := range drop {
		t := n.tables[fam]
		if t == nil {
			return unix.ENOENT
		}
		if !slices.Contains(takeover, fam) && !n.writable(t, f.port) {
			return unix.EPERM
		}
	}
	next := maps.Clone(n.tables)
	for _, fam := range drop {
		delete(next, fam)
	}
	for _, t := range tables {
		if next[t.family] != nil {
			if !n.writable(next[t.family], f.port) {
				return unix.EPERM
			}
			return unix.EEXIST
		}
		lt := &nftLive{flags: flags, chains: map[string]nftLiveChain{}}
		if flags&tableFlagOwn != 0 {
			lt.owner = f.port
		}
		for _, c := range t.chains {
			lc := nftLiveChain{hook: int64(c.hook), prio: int64(c.prio), typ: string(nftables.ChainTypeFilter), policy: int64(nftables.ChainPolicyAccept)}
			for _, r := range c.rules {
				key, _, _, err := ruleKey(t.family, r.exprs)
				if err != nil {
					return err
				}
				lc.rules = append(lc.rules, nftLiveRule{key: key})
			}
			lt.chains[c.name] = lc
		}
		next[t.family] = lt
	}
	n.tables = next
	n.commit()
	return nil
}

func (f *FakeNFT) Replace(tables []nftTableSpec, drop, takeover []nftables.TableFamily, flags uint32) error {
	return f.transaction(tables, drop, takeover, flags)
}

func (f *FakeNFT) Delete(drop, takeover []nftables.TableFamily, flags uint32) error {
	return f.transaction(nil, drop, takeover, flags)
}

// Close is the socket going away: what it owns is deleted, or with
// persist orphaned.
func (f *FakeNFT) Close() error {
	n := f.ns
	n.mu.Lock()
	defer n.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	for fam, t := range n.tables {
		if t.flags&tableFlagOwn == 0 || t.owner != f.port {
			continue
		}
		if t.flags&tableFlagPer != 0 {
			t.flags &^= tableFlagOwn
			t.owner = 0
		} else {
			delete(n.tables, fam)
		}
	}
	return nil
}

// NewFakeNFTLayer opens a layer over a new socket into n; cgroup paths
// resolve through ids (missing: the cgroup does not exist).
func NewFakeNFTLayer(n *FakeNFTNetns, spec NFTSpec, ids map[string]uint64) (*NFTLayer, error) {
	return newNFTLayer(n.Socket(), spec, func(p string) (uint64, error) {
		id, ok := ids[p]
		if !ok {
			return 0, unix.ENOENT
		}
		return id, nil
	})
}
