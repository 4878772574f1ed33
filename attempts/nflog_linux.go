//go:build linux

package attempts

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/firewall"
)

// nfnetlink_log, from linux/netfilter/nfnetlink_log.h (x/sys/unix has
// none of it).
const (
	subsysULOG    = 4 // NFNL_SUBSYS_ULOG
	msgPacket     = 0 // NFULNL_MSG_PACKET
	msgConfig     = 1 // NFULNL_MSG_CONFIG
	cfgCmd        = 1 // NFULA_CFG_CMD
	cfgMode       = 2 // NFULA_CFG_MODE
	cfgFlags      = 6 // NFULA_CFG_FLAGS
	cmdBind       = 1 // NFULNL_CFG_CMD_BIND
	copyPacket    = 2 // NFULNL_COPY_PACKET
	flagSeq       = 1 // NFULNL_CFG_F_SEQ
	attrHdr       = 1 // NFULA_PACKET_HDR
	attrIndev     = 4
	attrPhysIndev = 6
	attrPayload   = 9
	attrPrefix    = 10
	attrUID       = 11
	attrSeq       = 12
	attrGID       = 14
)

// Reader reads one namespace's NFLOG group into a Sink.
type Reader struct {
	conn *netlink.Conn
	ns   string // "" for the host, else the awsvpc task's pause container ID
	sink Sink
	once sync.Once
	done chan struct{}
}

// Sink takes events; it must never block (Queue drops and counts).
type Sink interface {
	Offer(Event)
	Lost(n uint64)
}

// Open binds group in the namespace netnsFd refers to (0: the caller's)
// and starts reading; ns names that namespace in the events ("" for the
// host's). Only one socket per namespace can bind a group: a second agent
// gets EBUSY.
func Open(netnsFd int, ns string, sink Sink) (*Reader, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFd})
	if err != nil {
		return nil, fmt.Errorf("opening an nfnetlink_log socket: %w", err)
	}
	// Room for bursts: the kernel's limit lets NFLogBurst through at once
	// per rule, and a full buffer loses events (counted by sequence).
	_ = c.SetReadBuffer(1 << 20)
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, firewall.NFLogSnaplen)
	mode[4] = copyPacket
	for _, attrs := range [][]netlink.Attribute{
		{{Type: cfgCmd, Data: []byte{cmdBind}}},
		{{Type: cfgMode, Data: mode}, {Type: cfgFlags, Data: binary.BigEndian.AppendUint16(nil, flagSeq)}},
	} {
		b, err := netlink.MarshalAttributes(attrs)
		if err != nil {
			return nil, errors.Join(err, c.Close())
		}
		hdr := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0}
		binary.BigEndian.PutUint16(hdr[2:], firewall.NFLogGroup)
		if _, err := c.Execute(netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(subsysULOG<<8 | msgConfig), Flags: netlink.Request | netlink.Acknowledge},
			Data:   append(hdr, b...),
		}); err != nil {
			return nil, errors.Join(fmt.Errorf("binding NFLOG group %d: %w", firewall.NFLogGroup, err), c.Close())
		}
	}
	r := &Reader{conn: c, ns: ns, sink: sink, done: make(chan struct{})}
	go r.loop()
	return r, nil
}

func (r *Reader) loop() {
	defer close(r.done)
	var last uint32
	seen := false
	for {
		msgs, err := r.conn.Receive()
		if err != nil {
			if errors.Is(err, unix.ENOBUFS) {
				continue // the sequence gap counts what was lost
			}
			if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) || errors.Is(err, unix.EBADF) {
				return
			}
			// Anything else is counted and read past, paced so that a
			// socket that keeps failing cannot spin.
			r.sink.Lost(1)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		now := time.Now()
		for _, m := range msgs {
			if m.Header.Type != netlink.HeaderType(subsysULOG<<8|msgPacket) || len(m.Data) < 4 {
				continue
			}
			ev, seq, hasSeq, err := parseMessage(m.Data[4:])
			if err != nil {
				r.sink.Lost(1)
				continue
			}
			if hasSeq {
				if seen && seq-last > 1 {
					r.sink.Lost(uint64(seq - last - 1))
				}
				last, seen = seq, true
			}
			ev.At, ev.Namespace = now, r.ns
			r.sink.Offer(ev)
		}
	}
}

// parseMessage reads one NFULNL_MSG_PACKET's attributes.
func parseMessage(b []byte) (ev Event, seq uint32, hasSeq bool, err error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return ev, 0, false, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case attrHdr:
			if d := ad.Bytes(); len(d) >= 2 {
				ev.HWProto = binary.BigEndian.Uint16(d)
			}
		case attrIndev:
			ev.InDev = int(ad.Uint32())
		case attrPhysIndev:
			ev.PhysInDev = int(ad.Uint32())
		case attrPayload:
			ev.Payload = append([]byte(nil), ad.Bytes()...)
		case attrPrefix:
			p := ad.Bytes()
			for len(p) > 0 && p[len(p)-1] == 0 {
				p = p[:len(p)-1]
			}
			ev.Prefix = string(p)
		case attrUID:
			u := ad.Uint32()
			ev.UID = &u
		case attrGID:
			g := ad.Uint32()
			ev.GID = &g
		case attrSeq:
			seq, hasSeq = ad.Uint32(), true
		}
	}
	return ev, seq, hasSeq, ad.Err()
}

// Close stops reading and unbinds the group (the kernel does on close).
func (r *Reader) Close() error {
	var err error
	r.once.Do(func() {
		err = r.conn.Close()
		<-r.done
	})
	return err
}
