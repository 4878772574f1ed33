//go:build linux

package firewall

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

var (
	ownerPersist = NFTFlags{Owner: true, Persist: true}
	ownerOnly    = NFTFlags{Owner: true}
	inet         = nftables.TableFamilyINet
	bridgeFam    = nftables.TableFamilyBridge
	hostSpec     = NFTSpec{Scope: ScopeHost, Action: ActionDrop, IPv6: true,
		Exempt:      []Exemption{{Container: "a", Port: "vetha"}, {Container: "noport"}},
		HostCgroups: []string{"/system.slice/docker-1.scope", "/gone"}}
	cgroupIDs = map[string]uint64{"/system.slice/docker-1.scope": 4242}
)

func fakeLayer(t *testing.T, n *FakeNFTNetns, spec NFTSpec) *NFTLayer {
	t.Helper()
	l, err := NewFakeNFTLayer(n, spec, cgroupIDs)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func ensureOK(t *testing.T, l *NFTLayer) NFTState {
	t.Helper()
	st, err := l.EnsureNFT(context.Background())
	if err != nil || !st.Present {
		t.Fatalf("ensure: %v %+v", err, st)
	}
	return st
}

func checkNFT(t *testing.T, l *NFTLayer) NFTState {
	t.Helper()
	st, err := l.CheckNFT(context.Background())
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	return st
}

func reasons(ps []Problem) []Reason {
	var out []Reason
	for _, p := range ps {
		out = append(out, p.Reason)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func TestNFTLayerCreateAndSteady(t *testing.T) {
	n := NewFakeNFTNetns(ownerPersist)
	l := fakeLayer(t, n, hostSpec)
	st := ensureOK(t, l)
	if !st.Owned || st.OwnerPort != l.Port() || !st.SurvivesFlush || !st.SurvivesStop || !st.Rebuilt {
		t.Fatalf("first: %+v", st)
	}
	if !slices.Equal(reasons(st.Problems), []Reason{ReasonNFTTableMissing}) {
		t.Fatalf("first problems: %v", st.Problems)
	}
	// One skipped exemption (no port), one vanished cgroup.
	if len(st.Skipped) != 2 {
		t.Fatalf("skipped: %q", st.Skipped)
	}
	commits := n.Commits
	st = ensureOK(t, l)
	if st.Rebuilt || len(st.Problems) != 0 || n.Commits != commits {
		t.Fatalf("steady state changed something: %+v (%d commits)", st, n.Commits-commits)
	}
	// Both tables, both chains in inet; exemption rules per family first,
	// every drop after the rule that logs it.
	br := n.Table(bridgeFam)
	if got := len(br.chains[nftPorts].rules); got != 6 {
		t.Fatalf("bridge rules: %d, want 2 exemptions + 2 logs and drops", got)
	}
	in := n.Table(inet)
	if len(in.chains[nftForward].rules) != 4 || len(in.chains[nftOutput].rules) != 4 {
		t.Fatalf("inet chains: %+v", in.chains)
	}
}

func TestNFTLayerSurvivesOthers(t *testing.T) {
	n := NewFakeNFTNetns(ownerPersist)
	l := fakeLayer(t, n, hostSpec)
	ensureOK(t, l)
	operator := n.Socket().Port()
	n.FlushRuleset(operator)
	if err := n.DeleteTable(inet, operator); !errors.Is(err, unix.EPERM) {
		t.Fatalf("delete by another socket: %v", err)
	}
	if err := n.EditRule(inet, nftForward, 0, operator); !errors.Is(err, unix.EPERM) {
		t.Fatalf("edit by another socket: %v", err)
	}
	if st := checkNFT(t, l); !st.Present || len(st.Problems) != 0 {
		t.Fatalf("after flush: %+v", st)
	}
}

func TestNFTLayerOwnerExit(t *testing.T) {
	t.Run("persist: orphaned, taken over", func(t *testing.T) {
		n := NewFakeNFTNetns(ownerPersist)
		l := fakeLayer(t, n, hostSpec)
		ensureOK(t, l)
		l.Close()
		if n.Table(inet) == nil || n.Table(bridgeFam) == nil {
			t.Fatal("persist tables went with their owner")
		}
		next := fakeLayer(t, n, hostSpec)
		st := checkNFT(t, next)
		if !st.Present || st.Owned || !slices.Equal(reasons(st.Problems), []Reason{ReasonNFTNotOwned}) {
			t.Fatalf("orphan: %+v", st)
		}
		// An orphan is writable by anyone: someone edits it.
		if err := n.EditRule(inet, nftForward, 0, 1); err != nil {
			t.Fatal(err)
		}
		st = checkNFT(t, next)
		if st.Present || !slices.Contains(reasons(st.Problems), ReasonNFTTableModified) {
			t.Fatalf("edited orphan: %+v", st)
		}
		st = ensureOK(t, next)
		if !st.Owned || st.OwnerPort != next.Port() {
			t.Fatalf("takeover: %+v", st)
		}
	})
	t.Run("owner only: gone, recreated", func(t *testing.T) {
		n := NewFakeNFTNetns(ownerOnly)
		l := fakeLayer(t, n, hostSpec)
		st := ensureOK(t, l)
		if !st.SurvivesFlush || st.SurvivesStop {
			t.Fatalf("owner-only guarantees: %+v", st)
		}
		l.Close()
		if n.Table(inet) != nil {
			t.Fatal("owner-only table outlived its owner")
		}
		ensureOK(t, fakeLayer(t, n, hostSpec))
	})
	t.Run("no owner flag: plain tables", func(t *testing.T) {
		n := NewFakeNFTNetns(NFTFlags{})
		l := fakeLayer(t, n, hostSpec)
		st := ensureOK(t, l)
		if st.Owned || st.SurvivesFlush || !st.SurvivesStop {
			t.Fatalf("unowned guarantees: %+v", st)
		}
		n.FlushRuleset(1)
		if st := checkNFT(t, l); st.Present {
			t.Fatalf("flush left an unowned table: %+v", st)
		}
		ensureOK(t, l)
	})
}

func TestNFTLayerOwnedByOther(t *testing.T) {
	n := NewFakeNFTNetns(ownerPersist)
	first := fakeLayer(t, n, hostSpec)
	ensureOK(t, first)
	second := fakeLayer(t, n, hostSpec)
	spec := hostSpec
	spec.Exempt = nil
	second.SetSpec(spec)
	st, err := second.EnsureNFT(context.Background())
	if err == nil || !errors.Is(err, unix.EPERM) {
		t.Fatalf("ensure over another owner: %v", err)
	}
	if !slices.Contains(reasons(st.Problems), ReasonNFTOwnedByOther) || st.Owned {
		t.Fatalf("state: %+v", st)
	}
	if err := second.Remove(context.Background()); err == nil || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("remove over another owner: %v", err)
	}
	first.Close()
	if err := second.Remove(context.Background()); err != nil {
		t.Fatalf("remove of the orphans: %v", err)
	}
	if n.Table(inet) != nil || n.Table(bridgeFam) != nil {
		t.Fatal("tables left after remove")
	}
}

func TestNFTLayerSpecChangeAndCounters(t *testing.T) {
	n := NewFakeNFTNetns(ownerPersist)
	l := fakeLayer(t, n, hostSpec)
	ensureOK(t, l)
	// Bridge drops are rules 3 and 5 (after two exemption rules, each
	// after its log rule), forward drops 1 and 3: all count as blocked; the
	// exemption and the log rules do not.
	n.Count(bridgeFam, nftPorts, 0, 7, 700)
	n.Count(bridgeFam, nftPorts, 2, 9, 900)
	n.Count(bridgeFam, nftPorts, 3, 3, 180)
	n.Count(inet, nftForward, 3, 1, 80)
	if st := checkNFT(t, l); st.Packets != 4 || st.Bytes != 260 {
		t.Fatalf("counters: %d packets %d bytes, want 4 and 260", st.Packets, st.Bytes)
	}
	spec := hostSpec
	spec.Action = ActionReject
	l.SetSpec(spec)
	st := ensureOK(t, l)
	if !st.Rebuilt || !slices.Equal(reasons(st.Problems), []Reason{ReasonNFTTableModified}) {
		t.Fatalf("spec change: %+v", st)
	}
	// Reject: the bridge chain only marks; the forward chain rejects.
	if got := len(n.Table(bridgeFam).chains[nftPorts].rules); got != 2 {
		t.Fatalf("bridge rules with reject: %d", got)
	}
	if got := len(n.Table(inet).chains[nftForward].rules); got != 6 {
		t.Fatalf("forward rules with reject: %d", got)
	}
}

func TestNFTTaskScope(t *testing.T) {
	n := NewFakeNFTNetns(ownerPersist)
	l := fakeLayer(t, n, NFTSpec{Scope: ScopeTask, Action: ActionDrop, IPv6: true})
	ensureOK(t, l)
	in := n.Table(inet)
	if len(in.chains) != 1 || len(in.chains[nftOutput].rules) != 4 || n.Table(bridgeFam) != nil {
		t.Fatalf("task tables: %+v bridge %+v", in, n.Table(bridgeFam))
	}
}

func TestIntentMapping(t *testing.T) {
	in := Intent{Action: ActionReject, IPv6: true, HostCgroups: []string{"/a"},
		Exempt: []Exemption{{Container: "x", Port: "vethx", Addrs: []netip.Addr{
			netip.MustParseAddr("172.17.0.2"), netip.MustParseAddr("fd00::2")}}}}
	s := SpecFromIntent(in)
	if len(s.Exempt) != 1 || s.Exempt[0].Port != "vethx" || len(s.Exempt[0].Addrs) != 2 || s.Host == nil || s.Action != ActionReject {
		t.Fatalf("layer 2 spec: %+v", s)
	}
	n := NewFakeNFTNetns(ownerPersist)
	l := fakeLayer(t, n, NFTSpec{Scope: ScopeHost})
	l.SetIntent(in)
	if got := l.Spec(); got.Action != ActionReject || len(got.Exempt) != 1 || got.Exempt[0].Port != "vethx" {
		t.Fatalf("layer 1 spec: %+v", got)
	}
	if s := SpecFromIntent(Intent{}); s.Host != nil {
		t.Fatal("nil cgroups must leave the host chain alone")
	}
}

// TestNFTCheckJudgesTheDaemonsTables: a one-shot check knows neither the
// daemon's action nor its exemptions or host cgroups. Tables a live daemon
// owns are whole when they end in the blocking rules; the forward chain
// must hold nothing else, and orphans keep the exact comparison.
func TestNFTCheckJudgesTheDaemonsTables(t *testing.T) {
	bare := NFTSpec{Scope: ScopeHost, Action: ActionDrop, IPv6: true}
	for _, daemon := range []NFTSpec{hostSpec, func() NFTSpec { s := hostSpec; s.Action = ActionReject; return s }()} {
		t.Run(string(daemon.Action), func(t *testing.T) {
			n := NewFakeNFTNetns(ownerPersist)
			d := fakeLayer(t, n, daemon)
			ensureOK(t, d)
			n.Count(inet, nftForward, 1, 3, 180)
			c := fakeLayer(t, n, bare)
			st := checkNFT(t, c)
			if !st.Present || st.Packets != 3 || slices.Contains(reasons(st.Problems), ReasonNFTTableModified) {
				t.Fatalf("check beside a daemon (%s): %+v", daemon.Action, st)
			}
			// A rule edited in the forward chain is not the daemon's block.
			if err := n.EditRule(inet, nftForward, 0, d.Port()); err != nil {
				t.Fatal(err)
			}
			if st := checkNFT(t, c); st.Present {
				t.Fatalf("check after the forward chain changed: %+v", st)
			}
			ensureOK(t, d)
			// Orphans: anyone may have written them, so only the exact
			// spec counts.
			d.Close()
			if st := checkNFT(t, c); st.Present {
				t.Fatalf("check of orphaned tables with the daemon's settings unknown: %+v", st)
			}
		})
	}
}
