package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// memPoint is an agent's memory at one age: RSS and the Go heap in use
// (live objects and their spans), so growth of the heap (a leak) can be
// told from RSS the runtime has not returned yet.
type memPoint struct {
	age         time.Duration
	rss, heapKB int64
}

// heapInuseKB reads runtime.MemStats.HeapInuse from the daemon's pprof on
// its status socket (the debug=1 heap profile ends with the MemStats).
func heapInuseKB(socket string) (int64, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}}
	resp, err := c.Get("http://imdsguard/debug/pprof/heap?debug=1")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "# HeapInuse = "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n / 1024, err
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no HeapInuse in the heap profile (HTTP %d)", resp.StatusCode)
}

// memTable renders an incarnation's minute-by-minute memory.
func memTable(pts []memPoint) string {
	var b strings.Builder
	b.WriteString("| Age | RSS | Go heap in use |\n|---|---|---|\n")
	for _, p := range pts {
		fmt.Fprintf(&b, "| %v | %d kB | %d kB |\n", p.age.Round(time.Second), p.rss, p.heapKB)
	}
	return b.String()
}
