package main

import (
	"bytes"
	"context"
	"regexp"
	"slices"
	"testing"
)

// TestHelpListsOnlyWhatItReads: each command's -h lists the flags it
// reads, and no daemon flag where it is not read.
func TestHelpListsOnlyWhatItReads(t *testing.T) {
	flagLine := regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`)
	for cmd, want := range map[string][]string{
		"status": {"all", "config", "json", "status-socket"},
		"remove": {"config", "iptables-backend", "log-format", "log-level", "status-socket"},
		"check": {"action", "all", "awsvpc-mode", "block-host-network", "config", "docker-host", "ecs-config-mode",
			"exempt-label", "exempt-task-family", "host-root", "iptables-backend", "ipv6", "json", "log-format", "log-level"},
	} {
		var out bytes.Buffer
		if code := dispatch(context.Background(), []string{cmd, "-h"}, &out, &out); code != exitOK {
			t.Fatalf("%s -h: exit %d", cmd, code)
		}
		var got []string
		for _, m := range flagLine.FindAllStringSubmatch(out.String(), -1) {
			got = append(got, m[1])
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s -h lists %v, want %v", cmd, got, want)
		}
	}
	var out bytes.Buffer
	dispatch(context.Background(), []string{"run", "-h"}, &out, &out)
	for _, f := range []string{"resync-interval", "metrics-addr", "status-group"} {
		if !bytes.Contains(out.Bytes(), []byte("  -"+f)) {
			t.Errorf("run -h lacks -%s", f)
		}
	}
}
