package tasknet

import (
	"net/netip"
	"strings"
	"testing"
)

// Docker's key for host mode names the host: the pid's namespace is used.
func TestNSPathNeverTheHostKey(t *testing.T) {
	if p := NSPath("/var/run/docker/netns/default", 7); p != "/proc/7/ns/net" {
		t.Fatalf("NSPath %q", p)
	}
	if p := NSPath("/var/run/docker/netns/abc", 7); p != "/var/run/docker/netns/abc" {
		t.Fatalf("NSPath %q", p)
	}
}

func TestBlackholedAndHasIPv6(t *testing.T) {
	imds, other := imdsNet4, imdsNet6
	if !blackholed([]routeInfo{{dst: imds, blackhole: true}}, imds) {
		t.Error("plain blackhole")
	}
	if blackholed([]routeInfo{{dst: imds, blackhole: true, priority: 100}, {dst: imds, priority: 10}}, imds) {
		t.Error("a better-metric route wins over the blackhole")
	}
	if blackholed([]routeInfo{{dst: other, blackhole: true}}, imds) {
		t.Error("wrong destination")
	}
	if hasIPv6([]routeInfo{{dst: linkLocal6}, {dst: loopback6}, {dst: imdsNet6, blackhole: true}}, []addrInfo{{ip: netip.MustParseAddr("::1").AsSlice(), global: true}}) {
		t.Error("link-local, loopback and our blackhole are no IPv6")
	}
	if !hasIPv6(nil, []addrInfo{{ip: netip.MustParseAddr("2600:1f18::5").AsSlice(), global: true}}) {
		t.Error("a global address is IPv6")
	}
	if !hasIPv6([]routeInfo{{dst: nil}}, nil) {
		t.Error("a default route is IPv6")
	}
}

func TestJudgePath(t *testing.T) {
	guard := policyRule{Pref: 0, Action: frActBlackhole, Protocol: guardProtocol, Dst: imdsNet4}
	local := policyRule{Pref: 0, Action: frActToTbl, Table: 255}
	main := policyRule{Pref: 32766, Action: frActToTbl, Table: 254}
	mark := policyRule{Pref: 100, Action: frActToTbl, Table: 100, Selectors: "fwmark"}
	forged := guard
	forged.Action = 3 // nop: passes everything on
	for _, tc := range []struct {
		name    string
		rules   []policyRule
		escapes []string
		tos     string
		guard   bool
		escape  string
	}{
		{"defaults, lookups refused", []policyRule{local, main}, nil, "", false, ""},
		{"a lookup leaves", []policyRule{local, main}, []string{"routed via 192.0.2.1 (table 100) from any source"}, "", false, "table 100"},
		{"a lookup leaves despite the guard", []policyRule{guard, local, main}, []string{"routed"}, "", true, "routed"},
		{"guard first", []policyRule{guard, local, mark, main}, nil, "tos route", true, ""},
		{"fwmark rule ahead of main", []policyRule{local, mark, main}, nil, "", false, "fwmark"},
		{"fwmark rule behind the main blackhole", []policyRule{local, main, mark}, nil, "", false, ""},
		{"a nop copy of the guard is no guard", []policyRule{forged, local, mark, main}, nil, "", false, "fwmark"},
		{"tos route", []policyRule{local, main}, nil, "route to 169.254.0.0/16 tos 0x10", false, "tos"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := judgePath(tc.rules, tc.escapes, true, tc.tos)
			if p.Guard != tc.guard || (tc.escape == "") != (p.Escape == "") || !strings.Contains(p.Escape, tc.escape) {
				t.Errorf("got %+v, want guard %v and an escape with %q", p, tc.guard, tc.escape)
			}
		})
	}
}
