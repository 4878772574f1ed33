package status

import (
	"fmt"
	"io"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// AttemptsStatus is the blocked-attempt pipeline (package attempts) in
// status.
type AttemptsStatus struct {
	Total uint64 `json:"total"`
	// Lost: events that never reached the recorder (queue full, socket
	// buffer overflowed); packets over the kernel's rate limit are blocked
	// without being logged and are not counted.
	Lost     uint64 `json:"events_lost"`
	Error    string `json:"error,omitempty"`
	AuditLog string `json:"audit_log,omitempty"`
	AuditErr string `json:"audit_log_error,omitempty"`
}

// AddCollector serves c's series on /metrics beside the status's own: for
// state the status does not hold (the attempt counters, kept by label set).
func (p *Publisher) AddCollector(c prometheus.Collector) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.extra = append(p.extra, c)
}

func (p *Publisher) collectors() []prometheus.Collector {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.extra
}

// Update changes the published status between syncs (fill sets fields no
// sync computes, such as the last attempts); a sync published meanwhile
// wins. No histogram or failure count is fed: it is no sync.
func (p *Publisher) Update(fill func(*Status)) {
	p.mu.Lock()
	st := p.st
	p.mu.Unlock()
	fill(&st)
	body := Encode(&st)
	p.mu.Lock()
	if p.st.CheckedAt.Equal(st.CheckedAt) {
		p.st, p.body = st, body
	}
	p.mu.Unlock()
}

// writeAttempts is the last attempts in `imdsguard status`.
func (s *Status) writeAttempts(w io.Writer) {
	if s.Attempts == nil {
		return
	}
	fmt.Fprintf(w, "blocked attempts: %d since start, %d events lost\n", s.Attempts.Total, s.Attempts.Lost)
	if s.Attempts.Error != "" {
		fmt.Fprintf(w, "  ! attempts: %s\n", s.Attempts.Error)
	}
	for i, at := range s.BlockedAttempts {
		if i == 10 {
			fmt.Fprintf(w, "  … %d more in status --json\n", len(s.BlockedAttempts)-i)
			break
		}
		fmt.Fprintf(w, "  %s %s to %s %s/%d by %s\n", at.At.Format(time.RFC3339), at.Describe(), at.Dst, at.Proto, at.DstPort, at.By)
	}
}
