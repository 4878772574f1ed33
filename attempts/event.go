package attempts

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Event is one packet as NFLOG handed it over.
type Event struct {
	At time.Time
	// Namespace is "" for the host's, else the awsvpc task's pause
	// container ID: whose reader got it.
	Namespace string
	Prefix    string
	// InDev and PhysInDev are interface indexes: in the bridge family
	// PhysInDev is the bridge port and InDev the bridge; in inet forward
	// InDev is the bridge (PhysInDev the port with br_netfilter).
	InDev, PhysInDev int
	HWProto          uint16
	UID, GID         *uint32
	// Payload starts at the network header, at most firewall.NFLogSnaplen
	// bytes.
	Payload []byte
}

// Packet is what the headers say.
type Packet struct {
	Family   string // "ipv4" or "ipv6"
	Src, Dst netip.Addr
	Proto    string // "tcp", "udp", "icmp", "icmpv6" or the number
	SrcPort  uint16
	DstPort  uint16
	// TCPFlags: "SYN" for a connection's first packet.
	TCPFlags string
	// Token: whether this is an IMDSv2 token request (PUT /latest/api/token).
	// Only a packet with the request's first bytes can tell: a SYN, which
	// is what a blocked connection ever sends, carries none (nil: unknown).
	Token *bool
	// Request is the HTTP request line when the packet carries one.
	Request string
}

// ParsePacket reads the IP and transport headers. ok is false when the
// bytes are no IP packet.
func ParsePacket(b []byte) (p Packet, ok bool) {
	if len(b) < 1 {
		return p, false
	}
	var proto byte
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		ihl := int(b[0]&0x0f) * 4
		if len(b) < 20 || ihl < 20 || len(b) < ihl {
			return p, false
		}
		p.Family = "ipv4"
		p.Src = netip.AddrFrom4([4]byte(b[12:16]))
		p.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		proto = b[9]
		// A fragment after the first has no transport header.
		if binary.BigEndian.Uint16(b[6:8])&0x1fff == 0 {
			l4 = b[ihl:]
		}
	case 6:
		if len(b) < 40 {
			return p, false
		}
		p.Family = "ipv6"
		p.Src = netip.AddrFrom16([16]byte(b[8:24]))
		p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
		proto = b[6] // extension headers are not followed: IMDS traffic has none
		l4 = b[40:]
	default:
		return p, false
	}
	switch proto {
	case 6:
		p.Proto = "tcp"
		if len(l4) >= 14 {
			p.SrcPort, p.DstPort = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
			p.TCPFlags = tcpFlags(l4[13])
			off := int(l4[12]>>4) * 4
			if off >= 20 && len(l4) >= off {
				p.Request, p.Token = httpRequest(l4[off:])
			}
		}
	case 17:
		p.Proto = "udp"
		if len(l4) >= 4 {
			p.SrcPort, p.DstPort = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
		}
	case 1:
		p.Proto = "icmp"
	case 58:
		p.Proto = "icmpv6"
	default:
		p.Proto = strconv.Itoa(int(proto))
	}
	return p, true
}

func tcpFlags(f byte) string {
	var out []string
	for i, n := range []string{"FIN", "SYN", "RST", "PSH", "ACK", "URG"} {
		if f&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return strings.Join(out, ",")
}

// httpRequest reads an HTTP request line at the start of a TCP payload
// (TCP Fast Open data in a SYN, or a connection set up before the block).
func httpRequest(data []byte) (string, *bool) {
	if len(data) == 0 {
		return "", nil
	}
	line, _, _ := bytes.Cut(data, []byte("\r\n"))
	f := bytes.Fields(line)
	if len(f) < 2 || !isMethod(f[0]) {
		return "", nil
	}
	tok := string(f[0]) == "PUT" && string(f[1]) == "/latest/api/token"
	return string(line), &tok
}

func isMethod(m []byte) bool {
	switch string(m) {
	case "GET", "PUT", "POST", "HEAD", "DELETE", "PATCH", "OPTIONS":
		return true
	}
	return false
}
