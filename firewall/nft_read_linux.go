//go:build linux

package firewall

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Read returns the table with its chains and rules, or nil.
func (c *nftConn) Read(fam nftables.TableFamily) (*nftLive, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	req := tableMsg(unix.NFT_MSG_GETTABLE, fam, NFTTable, nil, 0)
	req.Header.Flags = netlink.Request
	reply, err := c.nl.Execute(req)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(reply) != 1 {
		return nil, fmt.Errorf("GETTABLE answered %d messages", len(reply))
	}
	lt := &nftLive{chains: map[string]nftLiveChain{}}
	ad, err := netlink.NewAttributeDecoder(reply[0].Data[4:])
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_TABLE_FLAGS:
			lt.flags = ad.Uint32()
		case nftAttrOwner:
			lt.owner = ad.Uint32()
		}
	}
	if err := ad.Err(); err != nil {
		return nil, err
	}
	chains, err := c.conn.ListChainsOfTableFamily(fam)
	if err != nil {
		return nil, fmt.Errorf("listing chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name != NFTTable {
			continue
		}
		lc := nftLiveChain{hook: -1, prio: 0, policy: -1, typ: string(ch.Type)}
		if ch.Hooknum != nil {
			lc.hook = int64(*ch.Hooknum)
		}
		if ch.Priority != nil {
			lc.prio = int64(*ch.Priority)
		}
		if ch.Policy != nil {
			lc.policy = int64(*ch.Policy)
		}
		rules, err := c.rules(fam, ch.Name)
		if err != nil {
			return nil, fmt.Errorf("listing chain %s: %w", ch.Name, err)
		}
		lc.rules = rules
		lt.chains[ch.Name] = lc
	}
	return lt, nil
}

// rules dumps a chain's rules and keys each by its expressions as the
// kernel reports them. google/nftables' own parser silently skips
// expressions it does not know (socket, in v0.3.0), which would make a
// changed rule look like ours; here every expression counts, and one we
// cannot decode keys as its raw bytes, never equal to anything we send.
func (c *nftConn) rules(fam nftables.TableFamily, chain string) ([]nftLiveRule, error) {
	attrs, _ := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(NFTTable + "\x00")},
		{Type: unix.NFTA_RULE_CHAIN, Data: []byte(chain + "\x00")},
	})
	reply, err := c.nl.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE), Flags: netlink.Request | netlink.Dump},
		Data:   append(nfgen(fam), attrs...),
	})
	if err != nil {
		return nil, err
	}
	var out []nftLiveRule
	for _, m := range reply {
		if len(m.Data) < 4 {
			return nil, errors.New("short NEWRULE message")
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		ad.ByteOrder = binary.BigEndian
		var r nftLiveRule
		for ad.Next() {
			if ad.Type() == unix.NFTA_RULE_EXPRESSIONS {
				ad.Do(func(b []byte) error {
					r, err = liveRule(fam, b)
					return err
				})
			}
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// liveRule keys one rule's NFTA_RULE_EXPRESSIONS list.
func liveRule(fam nftables.TableFamily, list []byte) (nftLiveRule, error) {
	elems, err := netlink.UnmarshalAttributes(list)
	if err != nil {
		return nftLiveRule{}, err
	}
	var exprs []expr.Any
	var unknown []string
	for _, el := range elems {
		inner, err := netlink.UnmarshalAttributes(el.Data)
		if err != nil {
			return nftLiveRule{}, err
		}
		var name string
		var data []byte
		for _, a := range inner {
			switch a.Type & ^uint16(unix.NLA_F_NESTED) {
			case unix.NFTA_EXPR_NAME:
				name = strings.TrimRight(string(a.Data), "\x00")
			case unix.NFTA_EXPR_DATA:
				data = a.Data
			}
		}
		e := newExpr(name)
		if e == nil || expr.Unmarshal(byte(fam), data, e) != nil {
			unknown = append(unknown, name+":"+hex.EncodeToString(data))
			exprs = append(exprs, nil)
			continue
		}
		// A verdict is an immediate into the verdict register.
		if imm, ok := e.(*expr.Immediate); ok && imm.Register == unix.NFT_REG_VERDICT && len(imm.Data) == 0 {
			v := &expr.Verdict{}
			if err := expr.Unmarshal(byte(fam), data, v); err == nil {
				e = v
			}
		}
		exprs = append(exprs, e)
	}
	if len(unknown) > 0 {
		return nftLiveRule{key: "undecoded " + strings.Join(unknown, " ")}, nil
	}
	key, p, b, err := ruleKey(fam, exprs)
	if err != nil {
		key = "unencodable: " + err.Error()
	}
	return nftLiveRule{key: key, packets: p, bytes: b}, nil
}

// newExpr is the expression types layer 1 renders; anything else is not
// ours and keys by its bytes.
func newExpr(name string) expr.Any {
	switch name {
	case "meta":
		return &expr.Meta{}
	case "cmp":
		return &expr.Cmp{}
	case "payload":
		return &expr.Payload{}
	case "bitwise":
		return &expr.Bitwise{}
	case "counter":
		return &expr.Counter{}
	case "immediate":
		return &expr.Immediate{}
	case "reject":
		return &expr.Reject{}
	case "socket":
		return &expr.Socket{}
	case "limit":
		return &expr.Limit{}
	case "log":
		return &expr.Log{}
	}
	return nil
}
