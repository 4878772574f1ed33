//go:build linux

package firewall

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
)

var taskSpec = NFTSpec{Scope: ScopeTask, Action: ActionDrop, IPv6: true}

// reuseLayer is a task layer that trusts an unchanged generation, ensured
// once; it returns the reads a check costs from then on.
func reuseLayer(t *testing.T, n *FakeNFTNetns) *NFTLayer {
	t.Helper()
	l := fakeLayer(t, n, taskSpec)
	l.ReuseVerified(time.Hour)
	ensureOK(t, l)
	return l
}

func TestNFTReuseSkipsReadWhileNothingCommits(t *testing.T) {
	n := NewFakeNFTNetns(ownerPersist)
	l := reuseLayer(t, n)
	want := checkNFT(t, l)
	reads, commits := n.Reads, n.Commits
	for range 5 {
		if st := checkNFT(t, l); !st.Present || len(st.Problems) != 0 || st.OwnerPort != want.OwnerPort {
			t.Fatalf("reused check: %+v", st)
		}
		ensureOK(t, l)
	}
	if n.Reads != reads || n.Commits != commits {
		t.Fatalf("unchanged generation: %d reads, %d commits, want none", n.Reads-reads, n.Commits-commits)
	}
}

// Every change the fake can make, from another socket, on a kernel where
// it can touch the tables (no owner flag): the next check sees it.
func TestNFTReuseNeverMissesACommit(t *testing.T) {
	drifts := map[string]func(n *FakeNFTNetns, port uint32) error{
		"flush ruleset": func(n *FakeNFTNetns, port uint32) error { n.FlushRuleset(port); return nil },
		"delete table":  func(n *FakeNFTNetns, port uint32) error { return n.DeleteTable(inet, port) },
		"edit rule":     func(n *FakeNFTNetns, port uint32) error { return n.EditRule(inet, nftOutput, 0, port) },
		"replace table": func(n *FakeNFTNetns, port uint32) error {
			return n.Socket().Replace(nil, []nftables.TableFamily{inet}, nil, 0)
		},
	}
	for name, drift := range drifts {
		t.Run(name, func(t *testing.T) {
			n := NewFakeNFTNetns(NFTFlags{})
			l := reuseLayer(t, n)
			checkNFT(t, l)
			if err := drift(n, n.Socket().Port()); err != nil {
				t.Fatal(err)
			}
			if st := checkNFT(t, l); st.Present && len(st.Problems) == 0 {
				t.Fatalf("drift missed: %+v", st)
			}
			// Repaired, then trusted again.
			ensureOK(t, l)
			if st := checkNFT(t, l); len(st.Problems) != 0 {
				t.Fatalf("after repair: %+v", st)
			}
		})
	}
}

// A commit that lands while the read-back runs, after it read the table:
// the read is not trusted, and the next check reads again.
type commitDuringRead struct {
	*FakeNFT
	drift func()
}

func (k *commitDuringRead) Read(fam nftables.TableFamily) (*nftLive, error) {
	lt, err := k.FakeNFT.Read(fam)
	if k.drift != nil {
		k.drift()
		k.drift = nil
	}
	return lt, err
}

func TestNFTReuseCommitDuringReadBack(t *testing.T) {
	// Without the owner flag another layer's tables are as good as ours:
	// the layer under test starts with a read-back.
	n := NewFakeNFTNetns(NFTFlags{})
	ensureOK(t, fakeLayer(t, n, taskSpec))
	k := &commitDuringRead{FakeNFT: n.Socket()}
	l, err := newNFTLayer(k, taskSpec, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.ReuseVerified(time.Hour)
	operator := n.Socket().Port()
	k.drift = func() {
		if err := n.EditRule(inet, nftOutput, 0, operator); err != nil {
			t.Error(err)
		}
	}
	if st := checkNFT(t, l); len(st.Problems) != 0 {
		t.Fatalf("the read came before the edit: %+v", st)
	}
	if st := checkNFT(t, l); st.Present {
		t.Fatalf("edit during the read-back missed: %+v", st)
	}
}

func TestNFTReuseFallsBackToReading(t *testing.T) {
	t.Run("gen fails", func(t *testing.T) {
		n := NewFakeNFTNetns(ownerPersist)
		l := reuseLayer(t, n)
		checkNFT(t, l)
		n.FailGen(errors.New("broken"))
		reads := n.Reads
		checkNFT(t, l)
		checkNFT(t, l)
		if n.Reads == reads {
			t.Fatal("a failed generation read skipped the read-back")
		}
		// Reads done while Gen failed are never trusted afterwards.
		n.FailGen(nil)
		reads = n.Reads
		checkNFT(t, l)
		if n.Reads == reads {
			t.Fatal("trusted a read whose generation was unknown")
		}
	})
	t.Run("too old", func(t *testing.T) {
		n := NewFakeNFTNetns(ownerPersist)
		l := fakeLayer(t, n, taskSpec)
		l.ReuseVerified(time.Nanosecond)
		ensureOK(t, l)
		reads := n.Reads
		checkNFT(t, l)
		if n.Reads == reads {
			t.Fatal("an expired verified read was reused")
		}
	})
	t.Run("spec changed", func(t *testing.T) {
		n := NewFakeNFTNetns(ownerPersist)
		l := reuseLayer(t, n)
		l.SetSpec(NFTSpec{Scope: ScopeTask, Action: ActionReject, IPv6: true})
		if st := checkNFT(t, l); len(st.Problems) == 0 {
			t.Fatalf("old tables judged against a new spec: %+v", st)
		}
		ensureOK(t, l)
	})
	t.Run("off by default", func(t *testing.T) {
		n := NewFakeNFTNetns(ownerPersist)
		l := fakeLayer(t, n, taskSpec)
		ensureOK(t, l)
		reads := n.Reads
		checkNFT(t, l)
		if n.Reads == reads {
			t.Fatal("reused without ReuseVerified")
		}
	})
}

// TestNFTKernelGenReuse: on this kernel, commits by another process (`nft`)
// move the generation the layer reads, and a check that skips the
// read-back while it is unchanged still sees every edit of the tables. The
// layer runs without the owner flag so that nft may edit its tables.
func TestNFTKernelGenReuse(t *testing.T) {
	inNewNetns(t, func() {
		if _, err := nftCmd(t, "list", "tables"); err != nil {
			t.Fatalf("nft: %v", err)
		}
		k, err := dialNFT(0)
		mustDo(t, err, "dial")
		l, err := newNFTLayer(k, taskSpec, statCgroupID)
		mustDo(t, err, "open")
		defer l.Close()
		l.flags = NFTFlags{}
		l.ReuseVerified(time.Hour)
		mustEnsure(t, l, "first")
		gen := func() uint32 {
			g, err := k.Gen()
			mustDo(t, err, "generation")
			return g
		}
		g := gen()
		for range 3 {
			if st := mustCheck(t, l); !st.Present || len(st.Problems) != 0 {
				t.Fatalf("steady: %+v", st)
			}
		}
		if gen() != g {
			t.Fatal("checks committed something")
		}
		for _, step := range []struct {
			cmd    []string
			intact bool
		}{
			{[]string{"add", "table", "inet", "someone-else"}, true},
			{[]string{"flush", "chain", "inet", NFTTable, nftOutput}, false},
			{[]string{"delete", "rule", "inet", NFTTable, nftOutput, "handle", "HANDLE"}, false},
			{[]string{"delete", "table", "inet", NFTTable}, false},
			{[]string{"flush", "ruleset"}, false},
		} {
			if step.cmd[1] == "rule" {
				out, err := nftCmd(t, "-a", "list", "chain", "inet", NFTTable, nftOutput)
				mustDo(t, err, "list: "+out)
				i := strings.LastIndex(out, "# handle ")
				if i < 0 {
					t.Fatalf("no rule handle in %s", out)
				}
				step.cmd[6] = strings.Fields(out[i+len("# handle "):])[0]
			}
			before := gen()
			if out, err := nftCmd(t, step.cmd...); err != nil {
				t.Fatalf("nft %s: %v %s", strings.Join(step.cmd, " "), err, out)
			}
			if gen() == before {
				t.Fatalf("nft %s left the generation at %d", strings.Join(step.cmd, " "), before)
			}
			st := mustCheck(t, l)
			if intact := st.Present && len(st.Problems) == 0; intact != step.intact {
				t.Fatalf("after nft %s: %+v, want intact %v", strings.Join(step.cmd, " "), st, step.intact)
			}
			mustEnsure(t, l, "repair")
		}
	})
}
