package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/status"
)

// fakeDaemon serves st on a status socket, as the daemon does.
func fakeDaemon(t *testing.T, st status.Status) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "status.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	body := status.Encode(&st)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(body) })}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return sock
}

// TestStatusExitSaysStale: a daemon whose last successful sync is older
// than its bound still serves its last status; status exits 3 and says so.
func TestStatusExitSaysStale(t *testing.T) {
	cfgFile := filepath.Join(t.TempDir(), "imdsguard.env")
	if err := os.WriteFile(cfgFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, tc := range []struct {
		name string
		last time.Time
		code int
	}{
		{"fresh", now.Add(-time.Second), status.ExitProtected},
		{"stale", now.Add(-time.Minute), status.ExitStale},
	} {
		st := status.Status{Verdict: status.VerdictProtected, LastSync: &status.SyncSummary{At: tc.last, OK: true, LastSuccess: tc.last, StaleAfterS: 15}}
		sock := fakeDaemon(t, st)
		var out, errOut bytes.Buffer
		code := dispatch(context.Background(), []string{"status", "--config", cfgFile, "--status-socket", sock}, &out, &errOut)
		if code != tc.code {
			t.Errorf("%s: exit %d, want %d (%s)", tc.name, code, tc.code, errOut.String())
		}
		if tc.code == status.ExitStale && !strings.Contains(errOut.String(), "stale") {
			t.Errorf("%s: stderr %q", tc.name, errOut.String())
		}
	}
}
