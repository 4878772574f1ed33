package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/firewall"
)

// blocked decides, contender-independently, whether forwarded IPv4 traffic
// to IMDS is dropped for a container no rule names, with imdsguard's own
// evaluator: it walks the tables the way the kernel walks the packet, so an
// exemption (scenario 5) or a REJECT counts for what it does, and anything
// it cannot read counts against the block.
func blocked(save string) bool {
	rs, err := firewall.ParseRuleset(firewall.IPv4, []byte(save))
	if err != nil {
		return false
	}
	return rs.Evaluate(firewall.Probe(firewall.IPv4)).Dropped
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
