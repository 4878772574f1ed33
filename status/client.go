package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// ErrNoDaemon means nothing answers on the status socket.
var ErrNoDaemon = errors.New("no imdsguard daemon is running")

// QueryStatus asks the daemon on socket for its status.
func QueryStatus(ctx context.Context, socket string) (*Status, error) {
	hc := &http.Client{
		Timeout: 5 * time.Second,
		// One request per client: a kept-alive connection would hold one
		// of the socket's capped slots until the server's idle timeout.
		Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://imdsguard/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("%s is root's only (it lists every container and task): %w", socket, err)
		}
		if errors.Is(err, os.ErrNotExist) || strings.Contains(err.Error(), "connection refused") {
			return nil, fmt.Errorf("%w (%s: %v)", ErrNoDaemon, socket, err)
		}
		return nil, fmt.Errorf("asking the daemon on %s: %w", socket, err)
	}
	defer resp.Body.Close()
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("reading the daemon's status: %w", err)
	}
	return &st, nil
}
