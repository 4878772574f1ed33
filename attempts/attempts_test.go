package attempts

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/imdsguard/imdsguard/firewall"
)

// synV4 is a TCP SYN from src to IMDS port 80, as NFLOG hands it over.
func synV4(src string, payload string) []byte {
	ip := make([]byte, 20)
	ip[0], ip[9] = 0x45, 6
	copy(ip[12:16], netip.MustParseAddr(src).AsSlice())
	copy(ip[16:20], netip.MustParseAddr("169.254.169.254").AsSlice())
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp, 40000)
	binary.BigEndian.PutUint16(tcp[2:], 80)
	tcp[12], tcp[13] = 5<<4, 0x02
	if payload != "" {
		tcp[13] = 0x18 // PSH, ACK
	}
	return append(append(ip, tcp...), payload...)
}

func synV6(src string) []byte {
	ip := make([]byte, 40)
	ip[0], ip[6] = 0x60, 6
	copy(ip[8:24], netip.MustParseAddr(src).AsSlice())
	copy(ip[24:40], netip.MustParseAddr("fd00:ec2::254").AsSlice())
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[2:], 80)
	tcp[12], tcp[13] = 5<<4, 0x02
	return append(ip, tcp...)
}

func TestParsePacket(t *testing.T) {
	p, ok := ParsePacket(synV4("172.17.0.2", ""))
	if !ok || p.Family != "ipv4" || p.Proto != "tcp" || p.DstPort != 80 || p.TCPFlags != "SYN" || p.Token != nil || p.Src.String() != "172.17.0.2" {
		t.Fatalf("SYN: %+v", p)
	}
	p, _ = ParsePacket(synV4("172.17.0.2", "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n"))
	if p.Token == nil || !*p.Token || p.Request != "PUT /latest/api/token HTTP/1.1" {
		t.Fatalf("token request: %+v", p)
	}
	p, _ = ParsePacket(synV4("172.17.0.2", "GET /latest/meta-data/ HTTP/1.1\r\n"))
	if p.Token == nil || *p.Token {
		t.Fatalf("GET: %+v", p)
	}
	p, ok = ParsePacket(synV6("fd00:1::2"))
	if !ok || p.Family != "ipv6" || p.Dst.String() != "fd00:ec2::254" || p.DstPort != 80 {
		t.Fatalf("v6: %+v", p)
	}
	if _, ok := ParsePacket([]byte{0x45, 0}); ok {
		t.Fatal("a short packet parsed")
	}
}

var (
	ownerA = Owner{ContainerID: "aaaa", Name: "a", Image: "busybox", TaskARN: "arn:aws:ecs:us-east-1:1:task/demo/aaa", TaskFamily: "web", TaskRevision: "42", ECSContainer: "app", Port: "vethA"}
	ownerB = Owner{ContainerID: "bbbb", Name: "b", Port: "vethB"}
	ownerH = Owner{ContainerID: "hhhh", Name: "h", NetworkMode: "host"}
	ownerT = Owner{ContainerID: "tttt", Name: "task", TaskARN: "arn:t", TaskFamily: "svc"}
	addr   = netip.MustParseAddr("172.17.0.2")
)

func TestAttribute(t *testing.T) {
	withA := &Table{Version: 1, Ports: map[string]Owner{"vethA": ownerA}, Addrs: map[netip.Addr]Owner{addr: ownerA},
		Cgroups: map[uint64]Owner{77: ownerH}, Tasks: map[string]Owner{"pause1": ownerT}}
	noPort := &Table{Version: 2, Addrs: map[netip.Addr]Owner{addr: {ContainerID: "cccc", Name: "c"}}}
	bridge := firewall.NFLogPrefix(firewall.WhereBridge, 0)
	for _, tc := range []struct {
		name    string
		ev      Event
		t       *Table
		port    string
		want    string // container ID, "" for nobody
		decided bool
	}{
		{"by port", Event{Prefix: bridge, Payload: synV4("172.17.0.2", "")}, withA, "vethA", "aaaa", true},
		// B took A's address; its frame enters by its own port, which
		// the table of its time does not know yet: wait, never A.
		{"address reuse", Event{Prefix: bridge, Payload: synV4("172.17.0.2", "")}, withA, "vethB", "", false},
		{"a spoofed address by another port", Event{Prefix: bridge, Payload: synV4("172.17.0.2", "")}, withA, "vethX", "", false},
		{"by address without a port", Event{Prefix: firewall.NFLogPrefix(firewall.WhereForward, 0), Payload: synV4("172.17.0.2", "")}, noPort, "", "cccc", true},
		{"unknown address", Event{Prefix: bridge, Payload: synV4("172.17.0.9", "")}, noPort, "", "", true},
		{"cgroup", Event{Prefix: firewall.NFLogPrefix(firewall.WhereCgroup, 77), Payload: synV4("10.0.0.1", "")}, withA, "", "hhhh", true},
		{"unknown cgroup waits", Event{Prefix: firewall.NFLogPrefix(firewall.WhereCgroup, 78), Payload: synV4("10.0.0.1", "")}, withA, "", "", false},
		{"task namespace", Event{Namespace: "pause1", Prefix: firewall.NFLogPrefix(firewall.WhereTask, 0), Payload: synV6("fd00:1::2")}, withA, "", "tttt", true},
		{"not ours", Event{Prefix: "somebody else", Payload: synV4("172.17.0.2", "")}, withA, "vethA", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, decided := attribute(tc.ev, tc.t, tc.port)
			if decided != tc.decided || a.Attributed != (tc.want != "") || a.ContainerID != tc.want {
				t.Fatalf("got %+v decided %v, want %q decided %v", a, decided, tc.want, tc.decided)
			}
		})
	}
}

// TestAddressReuse: A probes, dies, B gets A's address and probes before
// the agent's next pass; then the pass publishes B. A's attempt is A's, B's
// are B's.
func TestAddressReuse(t *testing.T) {
	log, hook := test.NewNullLogger()
	rec := NewRecorder(logrus.NewEntry(log), nil)
	ports := map[int]string{10: "vethA", 11: "vethB"}
	g := NewGuard(rec, func(i int) string { return ports[i] })
	g.Publish(Table{Ports: map[string]Owner{"vethA": ownerA}, Addrs: map[netip.Addr]Owner{addr: ownerA}})
	bridge := firewall.NFLogPrefix(firewall.WhereBridge, 0)
	g.handle(Event{At: time.Now(), Prefix: bridge, PhysInDev: 10, Payload: synV4("172.17.0.2", "")})
	// A dies; B starts with the address and probes at once.
	g.handle(Event{At: time.Now(), Prefix: bridge, PhysInDev: 11, Payload: synV4("172.17.0.2", "")})
	g.handle(Event{At: time.Now(), Prefix: bridge, PhysInDev: 11, Payload: synV4("172.17.0.2", "")})
	if n := len(g.pending); n != 2 {
		t.Fatalf("pending: %d, want B's two", n)
	}
	g.Publish(Table{Ports: map[string]Owner{"vethB": ownerB}, Addrs: map[netip.Addr]Owner{addr: ownerB}})
	g.retry(time.Now())
	st := rec.Snapshot()
	if st.Total != 3 || len(g.pending) != 0 {
		t.Fatalf("recorded %d, pending %d", st.Total, len(g.pending))
	}
	got := []string{st.Last[2].ContainerID, st.Last[1].ContainerID, st.Last[0].ContainerID}
	if strings.Join(got, ",") != "aaaa,bbbb,bbbb" {
		t.Fatalf("attributed to %v", got)
	}
	if n := len(hook.AllEntries()); n != 2 {
		t.Fatalf("first-attempt lines: %d, want one for A and one for B", n)
	}
}

// TestPendingExpires: a port no table ever names is nobody's once it has
// waited, even though the address had an owner with another port.
func TestPendingExpires(t *testing.T) {
	log, _ := test.NewNullLogger()
	rec := NewRecorder(logrus.NewEntry(log), nil)
	g := NewGuard(rec, func(int) string { return "vethX" })
	g.Publish(Table{Ports: map[string]Owner{"vethA": ownerA}, Addrs: map[netip.Addr]Owner{addr: ownerA}})
	at := time.Now()
	g.handle(Event{At: at, Prefix: firewall.NFLogPrefix(firewall.WhereBridge, 0), PhysInDev: 3, Payload: synV4("172.17.0.2", "")})
	g.retry(at.Add(PendingWait / 2))
	if rec.Snapshot().Total != 0 {
		t.Fatal("decided before the wait ended")
	}
	g.retry(at.Add(PendingWait))
	st := rec.Snapshot()
	if st.Total != 1 || st.Last[0].Attributed {
		t.Fatalf("expired: %+v", st.Last)
	}
}

func TestQueueNeverBlocks(t *testing.T) {
	log, _ := test.NewNullLogger()
	rec := NewRecorder(logrus.NewEntry(log), nil)
	g := NewGuard(rec, nil)
	for range QueueSize + 10 {
		g.Offer(Event{})
	}
	g.Lost(5) // a sequence gap
	if g.LostTotal() != 15 || value(rec.lostCtr) != 15 {
		t.Fatalf("lost %d (metric %v), want 15", g.LostTotal(), value(rec.lostCtr))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { g.Run(ctx); close(done) }()
	cancel()
	<-done
}

func TestRecorderAggregatesAndCaps(t *testing.T) {
	log, hook := test.NewNullLogger()
	rec := NewRecorder(logrus.NewEntry(log), nil)
	a := Attempt{Owner: ownerA, Attributed: true, Family: "ipv4", Proto: "tcp", Dst: "169.254.169.254", DstPort: 80}
	for range 12 {
		rec.record(a)
	}
	if n := len(hook.AllEntries()); n != 1 || !strings.Contains(hook.LastEntry().Message, "blocked the first attempt from task arn:aws:ecs:us-east-1:1:task/demo/aaa (family web:42, container app, image busybox) to 169.254.169.254:80") {
		t.Fatalf("first line: %d %v", n, hook.LastEntry())
	}
	rec.flush(time.Now())
	want := "blocked 11 attempts from task arn:aws:ecs:us-east-1:1:task/demo/aaa (family web:42, container app, image busybox) to 169.254.169.254:80 in the last 10 s"
	if e := hook.LastEntry(); e.Level != logrus.WarnLevel || e.Message != want {
		t.Fatalf("interval line: %q, want %q", e.Message, want)
	}
	rec.flush(time.Now())
	if n := len(hook.AllEntries()); n != 2 {
		t.Fatalf("a quiet interval logged: %d lines", n)
	}
	if v := value(rec.counter.WithLabelValues("web", "app", "ipv4")); v != 12 {
		t.Fatalf("metric: %v", v)
	}
	// The cap: label sets past MaxLabelSets count as other.
	for i := range MaxLabelSets + 5 {
		b := Attempt{Owner: Owner{ContainerID: "c" + strings.Repeat("x", i), Name: "n" + strings.Repeat("x", i)}, Attributed: true, Family: "ipv6"}
		rec.record(b)
	}
	if n := count(rec.counter); n != MaxLabelSets+1 {
		t.Fatalf("label sets: %d, want %d", n, MaxLabelSets+1)
	}
	if v := value(rec.counter.WithLabelValues(other, other, "ipv6")); v != 6 {
		t.Fatalf("other: %v", v)
	}
	st := rec.Snapshot()
	if st.Total != 12+MaxLabelSets+5 || len(st.Last) != RingSize || st.Last[0].Name != "n"+strings.Repeat("x", MaxLabelSets+4) {
		t.Fatalf("ring: total %d, %d kept, newest %q", st.Total, len(st.Last), st.Last[0].Name)
	}
}

func TestAuditLogRotates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.json")
	l, err := OpenAuditLog(path, 400)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a := Attempt{Owner: ownerA, Attributed: true, Family: "ipv4"}
	for range 10 {
		if err := l.Write(a); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{path, path + ".1"} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 400 || len(b) == 0 {
			t.Fatalf("%s: %d bytes, cap 400", p, len(b))
		}
		for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
			var got Attempt
			if err := json.Unmarshal(line, &got); err != nil || got.TaskARN != ownerA.TaskARN {
				t.Fatalf("line %q: %v", line, err)
			}
		}
	}
}

func value(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

func count(c prometheus.Collector) int {
	ch := make(chan prometheus.Metric, 1024)
	c.Collect(ch)
	close(ch)
	return len(ch)
}
