//go:build linux

package firewall

import (
	"context"
	"os/exec"
	"strings"
	"testing"
)

// TestKernelDockerUserDeletedMidRepair is TestEnsureAnotherWriterBetween-
// ReadAndWrite's first case on the real iptables of both flavours: FORWARD
// and DOCKER-USER are flushed, and DOCKER-USER is deleted after the read and
// before the repair's write. The kernel must accept the repair that follows
// within the same Ensure, which never creates DOCKER-USER.
func TestKernelDockerUserDeletedMidRepair(t *testing.T) {
	for _, mode := range []string{"nft", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "legacy" {
				legacyPath(t)
			}
			inNewNetns(t, func() {
				b, err := DetectBackend(mode)
				if err != nil {
					t.Fatal(err)
				}
				m, err := NewManagerFor(b, Spec{Action: ActionDrop}, IPv4)
				if err != nil {
					t.Fatal(err)
				}
				ctx := context.Background()
				ipt := b.Binaries[IPv4]
				run := func(args ...string) {
					if out, err := exec.Command(ipt, args...).CombinedOutput(); err != nil {
						t.Fatalf("%s %v: %v %s", ipt, args, err, out)
					}
				}
				run("-N", DockerUser)
				run("-I", Forward, "-j", DockerUser)
				if _, err := m.Ensure(ctx); err != nil {
					t.Fatal(err)
				}
				run("-F", Forward)
				run("-F", DockerUser)
				m.tables[IPv4] = &beforeFirstRestore{Tables: m.tables[IPv4], fn: func() {
					run("-F", DockerUser)
					run("-X", DockerUser)
				}}
				states, err := m.Ensure(ctx)
				if err != nil || !states[0].Enforced {
					t.Fatalf("Ensure: enforced %v, %v", states[0].Enforced, err)
				}
				out, _ := exec.Command(saveName(ipt), "-t", Table).Output()
				for _, want := range []string{"-A FORWARD -j IMDS-GUARD\n", "-A IMDS-GUARD -d 169.254.169.254/32 -j DROP\n"} {
					if strings.Count(string(out), want) != 1 {
						t.Errorf("want one %q:\n%s", want, out)
					}
				}
				if strings.Contains(string(out), DockerUser) {
					t.Errorf("the repair created %s:\n%s", DockerUser, out)
				}
			})
		})
	}
}
