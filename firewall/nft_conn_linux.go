//go:build linux

package firewall

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftConn is the real nftKernel: one lasting NETLINK_NETFILTER socket.
//
// google/nftables v0.3.0 always sends table flags 0, and the kernel refuses
// to clear the owner flag of a table (EOPNOTSUPP), so its AddTable can
// neither create an owned table nor touch one. The table messages are built
// here; chains and rules are built by the library into a recording
// connection (nltest), and the whole batch goes out over the lasting socket
// the library dialled, whose *netlink.Conn we keep through a SockOption.
// Reads go through the library over the same socket.
type nftConn struct {
	mu   sync.Mutex // one request/response exchange at a time on nl
	conn *nftables.Conn
	nl   *netlink.Conn
	port uint32
}

// nftAttrOwner is NFTA_TABLE_OWNER (kernel 5.12), which x/sys/unix lacks.
const nftAttrOwner = 7

// nftReplyWait bounds one exchange: the kernel answers a batch before
// sendmsg returns, so this only matters if the socket is broken.
const nftReplyWait = 10 * time.Second

// dialNFT opens the lasting socket in the namespace netnsFd refers to (0:
// the caller's).
func dialNFT(netnsFd int) (*nftConn, error) {
	c := &nftConn{}
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(func(nl *netlink.Conn) error {
		c.nl = nl
		return nil
	})}
	if netnsFd > 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFd))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("opening a netlink socket for nf_tables: %w", err)
	}
	c.conn = conn
	// The port id the kernel bound the socket to is what ownership is
	// recorded as; mdlayher/netlink fills it into every message it sends.
	sent, err := c.nl.Send(genRequest())
	if err != nil {
		return nil, errors.Join(fmt.Errorf("asking nf_tables for its generation: %w", err), conn.CloseLasting())
	}
	c.port = sent.Header.PID
	if _, err := c.receiveUntil(sent.Header.Sequence); err != nil {
		return nil, errors.Join(err, conn.CloseLasting())
	}
	return c, nil
}

func (c *nftConn) Port() uint32 { return c.port }

func (c *nftConn) Close() error { return c.conn.CloseLasting() }

func nfgen(family nftables.TableFamily) []byte {
	return []byte{byte(family), unix.NFNETLINK_V0, 0, 0}
}

func genRequest() netlink.Message {
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
		Data:   nfgen(nftables.TableFamilyUnspecified),
	}
}

// Gen returns the namespace's ruleset generation (NFTA_GEN_ID of
// NFT_MSG_NEWGEN): the kernel bumps it on every committed transaction,
// whoever sends it.
func (c *nftConn) Gen() (uint32, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	reply, err := c.nl.Execute(genRequest())
	if err != nil {
		return 0, fmt.Errorf("asking nf_tables for its generation: %w", err)
	}
	newGen := netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWGEN)
	if len(reply) != 1 || reply[0].Header.Type != newGen || len(reply[0].Data) < 4 {
		return 0, fmt.Errorf("GETGEN answered %d messages, not one NEWGEN", len(reply))
	}
	ad, err := netlink.NewAttributeDecoder(reply[0].Data[4:])
	if err != nil {
		return 0, err
	}
	ad.ByteOrder = binary.BigEndian
	var gen uint32
	found := false
	for ad.Next() {
		if ad.Type() == unix.NFTA_GEN_ID {
			gen, found = ad.Uint32(), true
		}
	}
	if err := ad.Err(); err != nil {
		return 0, err
	}
	if !found {
		return 0, errors.New("NEWGEN without a generation id")
	}
	return gen, nil
}

// tableMsg is a NEWTABLE or DELTABLE message, with flags when non-nil.
func tableMsg(op int, fam nftables.TableFamily, name string, flags *uint32, hdr netlink.HeaderFlags) netlink.Message {
	attrs := []netlink.Attribute{{Type: unix.NFTA_TABLE_NAME, Data: []byte(name + "\x00")}}
	if flags != nil {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_TABLE_FLAGS, Data: binaryutil.BigEndian.PutUint32(*flags)})
	}
	b, _ := netlink.MarshalAttributes(attrs) // cannot fail: fixed, small attributes
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | op), Flags: netlink.Request | netlink.Acknowledge | hdr},
		Data:   append(nfgen(fam), b...),
	}
}

// record builds messages with the library without sending them anywhere.
func record(build func(*nftables.Conn)) ([]netlink.Message, error) {
	var got []netlink.Message
	ack := []netlink.Message{{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 4)}}
	rc, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		for _, m := range req {
			t := m.Header.Type
			if t != netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN) && t != netlink.HeaderType(unix.NFNL_MSG_BATCH_END) {
				got = append(got, m)
			}
		}
		return ack, nil
	}))
	if err != nil {
		return nil, err
	}
	build(rc)
	if err := rc.Flush(); err != nil {
		return nil, fmt.Errorf("encoding the batch: %w", err)
	}
	for i := range got {
		// Our own socket numbers them; no echo of every rule back to us.
		got[i].Header.Sequence, got[i].Header.PID, got[i].Header.Length = 0, 0, 0
		got[i].Header.Flags &^= unix.NLM_F_ECHO
	}
	return got, nil
}

// batch sends msgs as one nf_tables transaction and waits for the kernel's
// answer to each. A GETGEN request sent after the batch marks the end of
// the answers, so a failed batch (which may answer fewer messages) never
// leaves replies behind to confuse the next exchange.
func (c *nftConn) batch(msgs []netlink.Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := []netlink.Message{{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: netlink.Request}, Data: []byte{0, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES}}}
	b = append(b, msgs...)
	b = append(b, netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_END), Flags: netlink.Request}, Data: []byte{0, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES}})
	if _, err := c.nl.SendMessages(b); err != nil {
		return fmt.Errorf("sending the batch: %w", err)
	}
	sent, err := c.nl.Send(genRequest())
	if err != nil {
		return fmt.Errorf("sending the end marker: %w", err)
	}
	errs, err := c.receiveUntil(sent.Header.Sequence)
	return errors.Join(append(errs, err)...)
}

// receiveUntil reads answers until the NEWGEN reply to request seq. Errors
// the kernel reported on the way are returned as the first value.
func (c *nftConn) receiveUntil(seq uint32) ([]error, error) {
	if err := c.nl.SetReadDeadline(time.Now().Add(nftReplyWait)); err != nil {
		return nil, err
	}
	defer c.nl.SetReadDeadline(time.Time{})
	var errs []error
	newGen := netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWGEN)
	for {
		msgs, err := c.nl.Receive()
		if err != nil {
			// A broken socket ends the wait; anything else is the
			// kernel's answer to one message of the batch.
			if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EBADF) {
				return errs, fmt.Errorf("waiting for nf_tables: %w", err)
			}
			errs = append(errs, err)
			continue
		}
		for _, m := range msgs {
			if m.Header.Type == newGen && m.Header.Sequence == seq {
				return errs, nil
			}
		}
	}
}

// Flags creates and deletes a probe table in one transaction, first with
// owner+persist, then owner alone: the kernel refuses flags it does not know
// with EOPNOTSUPP.
func (c *nftConn) Flags() (NFTFlags, error) {
	name := NFTTable + "-probe-" + strconv.FormatUint(uint64(c.port), 10)
	for _, try := range []struct {
		flags uint32
		got   NFTFlags
	}{{tableFlagOwn | tableFlagPer, NFTFlags{Owner: true, Persist: true}}, {tableFlagOwn, NFTFlags{Owner: true}}} {
		err := c.batch([]netlink.Message{
			tableMsg(unix.NFT_MSG_NEWTABLE, nftables.TableFamilyINet, name, &try.flags, netlink.Create|netlink.Excl),
			tableMsg(unix.NFT_MSG_DELTABLE, nftables.TableFamilyINet, name, nil, 0),
		})
		if err == nil {
			return try.got, nil
		}
		if !errors.Is(err, unix.EOPNOTSUPP) {
			return NFTFlags{}, err
		}
	}
	return NFTFlags{}, nil
}

// dropMsgs deletes the tables in drop, taking the orphans in takeover first
// (NEWTABLE with the owner flag on an orphan makes this socket its owner).
func dropMsgs(drop, takeover []nftables.TableFamily, flags uint32) []netlink.Message {
	var msgs []netlink.Message
	for _, fam := range takeover {
		msgs = append(msgs, tableMsg(unix.NFT_MSG_NEWTABLE, fam, NFTTable, &flags, netlink.Create))
	}
	for _, fam := range drop {
		msgs = append(msgs, tableMsg(unix.NFT_MSG_DELTABLE, fam, NFTTable, nil, 0))
	}
	return msgs
}

func (c *nftConn) Replace(tables []nftTableSpec, drop, takeover []nftables.TableFamily, flags uint32) error {
	msgs := dropMsgs(drop, takeover, flags)
	for _, t := range tables {
		msgs = append(msgs, tableMsg(unix.NFT_MSG_NEWTABLE, t.family, NFTTable, &flags, netlink.Create|netlink.Excl))
		body, err := record(func(rc *nftables.Conn) {
			table := &nftables.Table{Name: NFTTable, Family: t.family}
			for _, ch := range t.chains {
				chain := rc.AddChain(&nftables.Chain{Name: ch.name, Table: table, Type: nftables.ChainTypeFilter,
					Hooknum: nftables.ChainHookRef(ch.hook), Priority: nftables.ChainPriorityRef(ch.prio),
					Policy: ptr(nftables.ChainPolicyAccept)})
				for _, r := range ch.rules {
					rc.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: r.exprs})
				}
			}
		})
		if err != nil {
			return err
		}
		msgs = append(msgs, body...)
	}
	return c.batch(msgs)
}

func (c *nftConn) Delete(drop, takeover []nftables.TableFamily, flags uint32) error {
	return c.batch(dropMsgs(drop, takeover, flags))
}

func ptr[T any](v T) *T { return &v }

// OpenNFT opens layer 1 in the namespace netnsFd refers to (0: the
// caller's). It keeps a netlink socket open until Close.
func OpenNFT(netnsFd int, spec NFTSpec) (*NFTLayer, error) {
	k, err := dialNFT(netnsFd)
	if err != nil {
		return nil, err
	}
	return newNFTLayer(k, spec, statCgroupID)
}
