//go:build linux

package firewall

import (
	"context"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// newGenType is the message the kernel multicasts at the end of every
// committed nf_tables transaction, whoever made it: one per change batch.
const newGenType = unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWGEN

// WatchNFTables calls changed after every committed nf_tables transaction in
// this network namespace, which covers every iptables-nft change (a flush, a
// deleted rule, an iptables-restore), so drift is repaired in milliseconds
// instead of at the next resync. iptables-legacy sends no notification; that
// backend is polled by the periodic resync instead.
//
// It returns when ctx ends, or with an error if the subscription cannot be
// made (it needs CAP_NET_ADMIN). Lost notifications (ENOBUFS) also call
// changed: a sync is cheap, a missed drift is not.
func WatchNFTables(ctx context.Context, changed func()) error {
	s, err := nl.Subscribe(unix.NETLINK_NETFILTER, unix.NFNLGRP_NFTABLES)
	if err != nil {
		return fmt.Errorf("subscribing to nf_tables notifications: %w", err)
	}
	stop := context.AfterFunc(ctx, s.Close)
	defer stop()
	defer s.Close()
	// Anything that changed before the subscription took effect (at start,
	// or while re-subscribing after an error) sent no notification to us.
	changed()
	for {
		msgs, _, err := s.Receive()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				changed()
				continue
			}
			return fmt.Errorf("reading nf_tables notifications: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type == newGenType {
				changed()
				break
			}
		}
	}
}
