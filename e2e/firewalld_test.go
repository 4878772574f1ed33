package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/e2e/sandbox"
)

// TestFirewalld runs a real firewalld (Debian's, private system bus) under
// dockerd, as on a RHEL-family ECS host, and does what operators do to it:
// --reload, --complete-reload, a restart. Each time the block must be back
// within the drift-repair bound, and once Docker has re-created its chains
// there must be exactly one of each of imdsguard's rules: Docker's
// re-creation never removes or duplicates them. firewalld's nftables
// backend (its default) leaves iptables alone; its iptables backend flushes
// every table on reload (moby/moby#35043), the case users report.
//
// Docker 20.10 and 28.5 only (26.1 sits between them), to keep CI short,
// each with both firewalld backends; and 20.10 on iptables-legacy with
// firewalld's iptables backend (a CentOS 7-style host), where nothing but
// firewalld's D-Bus signals announces the wipe (opt-in, an open finding).
func TestFirewalld(t *testing.T) {
	forEachBackend(t, func(t *testing.T, opts sandbox.Options) {
		if strings.HasSuffix(opts.DockerRoot, "/trixie") {
			t.Skip("firewalld runs on docker 20.10 and 28 only")
		}
		for _, fb := range []string{"nftables", "iptables"} {
			t.Run("firewalld-"+fb, func(t *testing.T) {
				if fb == "nftables" && opts.Backend == sandbox.BackendLegacy {
					t.Skip("iptables-legacy: firewalld's iptables backend only")
				}
				if opts.Backend == sandbox.BackendLegacy && os.Getenv("IMDSGUARD_E2E_FIREWALLD_LEGACY") == "" {
					// Measured 2.8 to 6.8 s per event with or without the
					// D-Bus trigger: the repair still waits for the 5 s
					// resync there, so the bound holds only by a margin.
					t.Skip("iptables-legacy with firewalld: open finding (repair bounded by the resync, not yet by firewalld's signal); IMDSGUARD_E2E_FIREWALLD_LEGACY=1 runs it")
				}
				opts := opts
				opts.Firewalld, opts.FirewalldBackend = true, fb
				testFirewalld(t, opts)
			})
		}
	})
}

func testFirewalld(t *testing.T, opts sandbox.Options) {
	e := newEnv(t, opts)
	s := e.s
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("firewalld log (tail):\n%s", tailLines(s.FirewalldLog(), 30))
		}
	})
	zones, err := s.FirewallCmd("--get-active-zones")
	if err != nil || !strings.Contains(zones, "docker") {
		t.Fatalf("dockerd did not register its docker zone with firewalld (%v):\n%s", err, zones)
	}
	// firewalld itself must not be what blocks IMDS here.
	e.startTwoContainers(t)
	version, _ := s.Docker("version", "--format", "{{.Server.Version}}")
	e.startAgent(t, "--resync-interval", "5s")
	e.waitProtected(t)
	e.assertBlocked(t, "onbridge", "onappnet")
	if bad := e.ruleCensus(); bad != "" {
		t.Fatalf("before any reload: %s", bad)
	}

	bound := 5 * time.Second // the drift-repair bound TestAgent holds
	for _, op := range []struct {
		name string
		do   func() error
	}{
		{"firewall-cmd --reload", func() error { _, err := s.FirewallCmd("--reload"); return err }},
		{"firewall-cmd --complete-reload", func() error { _, err := s.FirewallCmd("--complete-reload"); return err }},
		{"firewalld restart", func() error { return s.RestartFirewalld(context.Background()) }},
	} {
		for i := range 2 {
			// A poller watches from before the command until the block has
			// been back a while: a loss and its repair can both happen while
			// the command still runs.
			stop := make(chan struct{})
			var lostFor, worst time.Duration
			var lostAt time.Time
			polled := make(chan struct{})
			go func() {
				defer close(polled)
				for {
					ok := e.protectedOutside("ipv4") && e.protectedOutside("ipv6")
					now := time.Now()
					switch {
					case !ok && lostAt.IsZero():
						lostAt = now
					case ok && !lostAt.IsZero():
						lostFor += now.Sub(lostAt)
						worst = max(worst, now.Sub(lostAt))
						lostAt = time.Time{}
					}
					select {
					case <-stop:
						if !lostAt.IsZero() {
							lostFor += now.Sub(lostAt)
							worst = max(worst, now.Sub(lostAt))
						}
						return
					default:
					}
				}
			}()
			start := time.Now()
			if err := op.do(); err != nil {
				close(stop)
				t.Fatalf("%s: %v", op.name, err)
			}
			took := time.Since(start)
			waitFor(t, "block back after "+op.name, bound, func() bool {
				return e.protectedOutside("ipv4") && e.protectedOutside("ipv6")
			})
			// Docker re-creates its chains on firewalld's Reloaded signal or
			// its reappearance on the bus, on its own schedule; watch the
			// census until it has been clean for 3 s in a row.
			var last string
			clean := time.Time{}
			for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				last = e.ruleCensus()
				if last == "" && e.protectedOutside("ipv4") && e.protectedOutside("ipv6") {
					if clean.IsZero() {
						clean = time.Now()
					}
					if time.Since(clean) >= 3*time.Second {
						break
					}
				} else {
					clean = time.Time{}
				}
				if time.Now().After(deadline) {
					rules, _ := s.HostRun("iptables-save", "-t", "filter")
					t.Fatalf("after %s, not one of each rule for 3 s within 20 s: %s\n%s", op.name, last, rules)
				}
			}
			close(stop)
			<-polled
			if worst > bound {
				t.Errorf("%s: block lost for %v at a stretch, over the %v repair bound", op.name, worst, bound)
			}
			t.Logf("%s #%d (%s firewalld, docker %s): command took %v; block seen lost for %v in all, longest %v (poll ≈ one ip(6)tables-save pair)",
				op.name, i+1, opts.FirewalldBackend, version, took.Round(time.Millisecond), lostFor.Round(time.Millisecond), worst.Round(time.Millisecond))
		}
		e.assertBlocked(t, "onbridge", "onappnet")
		zones, err := s.FirewallCmd("--get-active-zones")
		if err != nil || !strings.Contains(zones, "docker") {
			t.Fatalf("after %s, Docker's zone is gone (%v):\n%s", op.name, err, zones)
		}
	}
	// Containers started after all that are blocked too (Docker's own
	// forwarding works again).
	if _, err := s.RunContainer("late"); err != nil {
		t.Fatal(err)
	}
	e.assertBlocked(t, "late")
}

// ruleCensus reads both families' filter tables; see census.
func (e *env) ruleCensus() string {
	var bad []string
	for _, bin := range []string{"iptables-save", "ip6tables-save"} {
		out, err := e.s.HostRun(bin, "-t", "filter")
		if err != nil {
			return fmt.Sprintf("%s: %v", bin, err)
		}
		if c := census(out); c != "" {
			bad = append(bad, bin+": "+c)
		}
	}
	return strings.Join(bad, "; ")
}

// census reports what in one family's `iptables-save -t filter` is not
// exactly one: our FORWARD jump, our DOCKER-USER jump (while DOCKER-USER
// exists), each line of IMDS-GUARD's body, and never more than one of
// Docker's FORWARD jump to DOCKER-USER (Docker's to restore, so its absence
// is not ours to flag). "" means clean.
func census(out string) string {
	var bad []string
	count := map[string]int{}
	user := false
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, ":DOCKER-USER ") {
			user = true
		}
		if l == "-A FORWARD -j IMDS-GUARD" || l == "-A FORWARD -j DOCKER-USER" || strings.HasPrefix(l, "-A DOCKER-USER -j IMDS-GUARD") || strings.HasPrefix(l, "-A IMDS-GUARD ") {
			count[l]++
		}
	}
	must := []string{"-A FORWARD -j IMDS-GUARD"}
	if user {
		must = append(must, "-A DOCKER-USER -j IMDS-GUARD")
	}
	for _, m := range must {
		if count[m] == 0 {
			bad = append(bad, "no "+m)
		}
	}
	keys := make([]string, 0, len(count))
	for k := range count {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if count[k] > 1 {
			bad = append(bad, fmt.Sprintf("%d× %q", count[k], k))
		}
	}
	return strings.Join(bad, "; ")
}
