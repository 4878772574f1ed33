package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// IMDS as the rules spell it.
const imdsRuleDst = "169.254.169.254/32"

// parseRules turns `iptables-save -t filter` into chain -> rules, each rule
// without its "-A CHAIN " prefix.
func parseRules(save string) map[string][]string {
	rules := map[string][]string{}
	for _, l := range strings.Split(save, "\n") {
		rest, ok := strings.CutPrefix(l, "-A ")
		if !ok {
			continue
		}
		chain, rule, _ := strings.Cut(rest, " ")
		rules[chain] = append(rules[chain], rule)
	}
	return rules
}

// blocked decides, contender-independently, whether forwarded IPv4 traffic
// to IMDS is dropped: FORWARD must start with the DOCKER-USER jump, and
// DOCKER-USER must drop IMDS (directly, as the seed rule does, or through a
// jump to a chain that does, as imdsguard's IMDS-GUARD) before anything
// could accept or return. An ACCEPT of IMDS from one /32 source is an
// exemption (scenario 5) and is passed over: the block holds for every
// other container. Conservative: any other rule ends the walk.
func blocked(save string) bool {
	rules := parseRules(save)
	fw := rules["FORWARD"]
	if len(fw) == 0 || fw[0] != "-j DOCKER-USER" {
		return false
	}
	return chainDrops(rules, "DOCKER-USER", 0)
}

var exemption = regexp.MustCompile(`^-s \d+\.\d+\.\d+\.\d+/32 -d ` + regexp.QuoteMeta(imdsRuleDst) + ` -j ACCEPT$`)

func chainDrops(rules map[string][]string, chain string, depth int) bool {
	if depth > 4 {
		return false
	}
	for _, r := range rules[chain] {
		if r == "-d "+imdsRuleDst+" -j DROP" || strings.HasPrefix(r, "-d "+imdsRuleDst+" -j REJECT") {
			return true
		}
		if exemption.MatchString(r) {
			continue
		}
		target, ok := strings.CutPrefix(r, "-j ")
		if !ok || strings.Contains(target, " ") {
			return false
		}
		switch target {
		case "RETURN", "ACCEPT":
			return false
		}
		if chainDrops(rules, target, depth+1) {
			return true
		}
	}
	return false
}

// nftMonitor timestamps every committed nf_tables transaction in one
// network namespace: the kernel multicasts NFT_MSG_NEWGEN at the end of each.
type nftMonitor struct {
	s    *nl.NetlinkSocket
	ch   chan time.Time
	mu   sync.Mutex
	lost int // ENOBUFS: notifications dropped by the kernel
	done chan struct{}
}

const newGenType = unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWGEN

func newNFTMonitor(nsPath string) (*nftMonitor, error) {
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	cur, err := netns.Get()
	if err != nil {
		return nil, err
	}
	defer cur.Close()
	// SubscribeAt creates the socket on a thread switched into the
	// sandbox namespace and switches back: the socket stays bound there.
	s, err := nl.SubscribeAt(target, cur, unix.NETLINK_NETFILTER, unix.NFNLGRP_NFTABLES)
	if err != nil {
		return nil, fmt.Errorf("subscribing to nf_tables in %s: %w", nsPath, err)
	}
	// Rebuilding a chain of hundreds of exemptions sends one message per
	// rule: with the default buffer the kernel drops some (ENOBUFS), and a
	// lost commit would read as a drift never repaired.
	if err := unix.SetsockoptInt(s.GetFd(), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20); err != nil {
		s.Close()
		return nil, fmt.Errorf("nf_tables monitor buffer: %w", err)
	}
	m := &nftMonitor{s: s, ch: make(chan time.Time, 4096), done: make(chan struct{})}
	go m.loop()
	return m, nil
}

func (m *nftMonitor) loop() {
	defer close(m.done)
	for {
		msgs, _, err := m.s.Receive()
		now := time.Now()
		if err != nil {
			if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				m.mu.Lock()
				m.lost++
				m.mu.Unlock()
				continue
			}
			return // closed
		}
		for _, msg := range msgs {
			if msg.Header.Type == newGenType {
				select {
				case m.ch <- now:
				default:
					m.mu.Lock()
					m.lost++
					m.mu.Unlock()
				}
			}
		}
	}
}

func (m *nftMonitor) Lost() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lost
}

// drain discards pending notifications.
func (m *nftMonitor) drain() {
	for {
		select {
		case <-m.ch:
		default:
			return
		}
	}
}

// quiet waits until no commit has been seen for d, or ctx/limit ends.
func (m *nftMonitor) quiet(ctx context.Context, d, limit time.Duration) {
	end := time.Now().Add(limit)
	t := time.NewTimer(d)
	defer t.Stop()
	for time.Now().Before(end) {
		select {
		case <-ctx.Done():
			return
		case <-m.ch:
			t.Reset(d)
		case <-t.C:
			return
		}
	}
}

func (m *nftMonitor) Close() {
	m.s.Close()
	select {
	case <-m.done:
	case <-time.After(2 * time.Second):
	}
}
