package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/ecsconfig"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
)

// blockingRead is a read that answers at once, or blocks until released.
type blockingRead struct {
	calls   atomic.Int32
	block   atomic.Bool
	release chan struct{}
}

func (b *blockingRead) read(ctx context.Context) ecsFiles {
	b.calls.Add(1)
	if b.block.Load() {
		<-b.release
	}
	return ecsFiles{at: time.Now(), res: ecsconfig.Result{AWSVPCBlockIMDS: true}}
}

// TestBoundedReaderDeadline: a read that blocks is abandoned at the
// deadline, no second read starts while it blocks, and the first read after
// it returns reads afresh.
func TestBoundedReaderDeadline(t *testing.T) {
	type step struct {
		what      string
		block     bool // the reads this step starts block
		release   bool // release a blocked read before the step
		cancel    bool // the caller's context is already done
		wantErr   string
		wantCalls int32
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"answers in time", []step{
			{what: "read", wantCalls: 1},
			{what: "read again", wantCalls: 2},
		}},
		{"blocked read is abandoned, then waited for", []step{
			{what: "blocks", block: true, wantErr: "has not returned within", wantCalls: 1},
			{what: "still blocked", block: true, wantErr: "has not returned within", wantCalls: 1},
			{what: "and again", block: true, wantErr: "has not returned within", wantCalls: 1},
			{what: "released: a fresh read", release: true, wantCalls: 2},
		}},
		{"a stop ends the wait", []step{
			{what: "cancelled", block: true, cancel: true, wantErr: "context canceled", wantCalls: 1},
			{what: "still blocked after the stop", block: true, wantErr: "has not returned within", wantCalls: 1},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &blockingRead{release: make(chan struct{})}
			r := &boundedReader{read: b.read, timeout: 50 * time.Millisecond}
			released := false
			blockedMsg := "" // one read blocked: the same words every time, logged once
			t.Cleanup(func() {
				if !released {
					close(b.release)
				}
			})
			for _, s := range tc.steps {
				b.block.Store(s.block)
				if s.release {
					close(b.release)
					released = true
					// The abandoned read returns now; wait for its result
					// so the step sees it finished.
					for r.pending != nil && len(r.pending) == 0 {
						time.Sleep(time.Millisecond)
					}
				}
				ctx, cancel := context.WithCancel(context.Background())
				if s.cancel {
					cancel()
				}
				start := time.Now()
				f := r.get(ctx)
				cancel()
				took := time.Since(start)
				switch {
				case s.wantErr == "" && f.err != nil:
					t.Fatalf("%s: %v", s.what, f.err)
				case s.wantErr != "" && (f.err == nil || !strings.Contains(f.err.Error(), s.wantErr)):
					t.Fatalf("%s: error %v, want %q", s.what, f.err, s.wantErr)
				case s.wantErr == "" && !f.res.AWSVPCBlockIMDS:
					t.Fatalf("%s: result lost: %+v", s.what, f)
				case f.at.IsZero():
					t.Fatalf("%s: no read time", s.what)
				}
				if f.err != nil && strings.Contains(f.err.Error(), "has not returned") {
					if blockedMsg != "" && f.err.Error() != blockedMsg {
						t.Errorf("%s: the same blocked read reads %q, then %q", s.what, blockedMsg, f.err)
					}
					blockedMsg = f.err.Error()
				}
				if f.err != nil && !strings.HasPrefix(f.err.Error(), "cannot read the ECS configuration") {
					t.Errorf("%s: error does not say what failed: %v", s.what, f.err)
				}
				if took > time.Second {
					t.Errorf("%s: get took %v, past its deadline", s.what, took)
				}
				// A read abandoned at once may not have begun yet.
				eventually(t, s.what+": the read begun", func() bool { return b.calls.Load() >= s.wantCalls })
				if got := b.calls.Load(); got != s.wantCalls {
					t.Fatalf("%s: %d reads started, want %d", s.what, got, s.wantCalls)
				}
			}
		})
	}
}

// TestECSViewStaleness: a failed read keeps the last good one for display,
// and a read older than the limit is refused even if it succeeded.
func TestECSViewStaleness(t *testing.T) {
	good := ecsFiles{res: ecsconfig.Result{AWSVPCBlockIMDS: true}}
	bad := ecsFiles{err: errors.New("cannot read the ECS configuration: boom")}
	for _, tc := range []struct {
		name     string
		reads    []ecsFiles
		ages     []time.Duration // how long ago each read began
		maxAge   time.Duration
		wantErr  string
		wantGood bool
		changed  []bool // set's answers
	}{
		{"fresh good read", []ecsFiles{good}, []time.Duration{0}, time.Minute, "", true, []bool{true}},
		{"good then failed", []ecsFiles{good, bad}, []time.Duration{time.Second, 0}, time.Minute, "boom", true, []bool{true, true}},
		{"failed from the start", []ecsFiles{bad}, []time.Duration{0}, time.Minute, "boom", false, []bool{true}},
		{"failed then good", []ecsFiles{bad, good}, []time.Duration{time.Second, 0}, time.Minute, "", true, []bool{true, true}},
		{"the same failure twice is no change", []ecsFiles{bad, bad}, []time.Duration{time.Second, 0}, time.Minute, "boom", false, []bool{true, false}},
		{"the same good read twice is no change", []ecsFiles{good, good}, []time.Duration{time.Second, 0}, time.Minute, "", true, []bool{true, false}},
		{"a good read too old", []ecsFiles{good}, []time.Duration{time.Hour}, time.Minute, "old", true, []bool{true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newECSView()
			for i, f := range tc.reads {
				f.at = time.Now().Add(-tc.ages[i])
				if got := v.set(f); got != tc.changed[i] {
					t.Errorf("read %d: changed %v, want %v", i, got, tc.changed[i])
				}
			}
			last, g := v.get(context.Background(), tc.maxAge)
			if tc.wantErr == "" && last.err != nil || tc.wantErr != "" && (last.err == nil || !strings.Contains(last.err.Error(), tc.wantErr)) {
				t.Fatalf("last read error %v, want %q", last.err, tc.wantErr)
			}
			if !g.at.IsZero() != tc.wantGood {
				t.Fatalf("last good read %+v, want one: %v", g, tc.wantGood)
			}
		})
	}
	v := newECSView()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if last, _ := v.get(ctx, time.Minute); last.err == nil {
		t.Fatal("before the first read the view claimed a configuration")
	}
}

// TestECSStatusFromFailedRead: a sync after a failed read claims no ECS
// setting, shows the last good read as stale, and is degraded, not failed.
func TestECSStatusFromFailedRead(t *testing.T) {
	fx := newFixture(t)
	a := fx.build(t)
	a.ecsView = newECSView()
	at := time.Now().Add(-time.Minute)
	a.ecsView.set(ecsFiles{at: at, res: ecsconfig.Result{AWSVPCBlockIMDS: true, Reason: "set"},
		in: ecsconfig.Inputs{UserConfig: ecsconfig.File{Present: true}}})
	a.ecsView.set(ecsFiles{at: time.Now(), err: errors.New("cannot read the ECS configuration: /etc/ecs/ecs.config is a named pipe (FIFO), not a regular file: not read")})
	st, issues, err := ecsStatus(a.cfg.ECSConfigMode, nil, a.readECS(context.Background(), true))
	if err != nil {
		t.Fatalf("the daemon's sync failed on a config read: %v", err)
	}
	if st.AWSVPCBlockIMDS || st.RestartNeeded {
		t.Fatalf("claims a setting the last read did not see: %+v", st)
	}
	if !st.Stale || !st.ReadAt.Equal(at) || st.Config == nil || !st.Config.AWSVPCBlockIMDS || !strings.Contains(st.Error, "FIFO") {
		t.Fatalf("stale display: %+v", st)
	}
	if len(issues) != 1 || !strings.Contains(issues[0], "FIFO") || !strings.Contains(issues[0], "not claimed") {
		t.Fatalf("issues %q", issues)
	}
}

// blockingECSConfig writes an ecs.config asking for the awsvpc block and
// returns its path.
func blockingECSConfig(t *testing.T, hostRoot string) string {
	t.Helper()
	p := filepath.Join(hostRoot, ecsconfig.UserConfigPath)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("ECS_AWSVPC_BLOCK_IMDS=true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestFIFOConfigDoesNotStallRepair: the daemon with ecs.config replaced by
// a FIFO still repairs drift at once, logs and reports the file, and claims
// no ECS setting.
func TestFIFOConfigDoesNotStallRepair(t *testing.T) {
	fx := newFixture(t)
	cfgPath := blockingECSConfig(t, fx.cfg.HostRoot)
	fx.start(t)
	changed := fx.watcher(t)
	eventually(t, "the setting seen", func() bool { return fx.agent.Status().ECSConfig.AWSVPCBlockIMDS })
	if err := os.Remove(cfgPath); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(cfgPath, 0o644); err != nil {
		t.Fatal(err)
	}
	// inotify sees the new file; the next read refuses it.
	eventually(t, "the FIFO reported", func() bool {
		st := fx.agent.Status()
		return strings.Contains(st.ECSConfig.Error, "FIFO") && st.ECSConfig.Stale && !st.ECSConfig.AWSVPCBlockIMDS
	})
	fx.fakes[firewall.IPv4].Flush(firewall.Forward)
	changed()
	eventually(t, "repair with a FIFO for ecs.config", func() bool {
		st := fx.agent.Status()
		return st.Repairs >= 1 && st.Firewall.IPv4.Enforced
	})
	if st := fx.agent.Status(); st.Verdict != status.VerdictDegraded {
		t.Fatalf("verdict %s with an unreadable ecs.config", st.Verdict)
	}
}

// TestDaemonReadsAgentEnvOncePerContainer: the daemon reads the running ECS
// agent's environment in the lister, once per agent container, and a new
// agent container is read afresh.
func TestDaemonReadsAgentEnvOncePerContainer(t *testing.T) {
	fx := newFixture(t)
	blockingECSConfig(t, fx.cfg.HostRoot)
	fx.docker.containers = []docker.Container{{ID: "agent1", Name: docker.ECSAgentName, NetworkMode: "host"}}
	fx.docker.env["agent1"] = []string{"ECS_CLUSTER=demo"}
	fx.start(t)
	eventually(t, "the restart asked for", func() bool { return fx.agent.Status().ECSConfig.RestartNeeded })
	// ecs-init restarts the agent: a new container with the setting.
	fx.docker.mu.Lock()
	fx.docker.containers = []docker.Container{{ID: "agent2", Name: docker.ECSAgentName, NetworkMode: "host"}}
	fx.docker.env["agent2"] = []string{"ECS_CLUSTER=demo", "ECS_AWSVPC_BLOCK_IMDS=true"}
	fx.docker.mu.Unlock()
	fx.docker.event(t)
	eventually(t, "the new agent read", func() bool {
		st := fx.agent.Status()
		return st.ECSConfig.RunningAgent != nil && st.ECSConfig.RunningAgent.AWSVPCBlockIMDS && !st.ECSConfig.RestartNeeded
	})
	fx.docker.event(t) // another listing: no new read
	eventually(t, "the listing", func() bool { return fx.docker.listCalls() >= 3 })
	fx.docker.mu.Lock()
	defer fx.docker.mu.Unlock()
	if fx.docker.envReads["agent1"] != 1 || fx.docker.envReads["agent2"] != 1 {
		t.Fatalf("environment reads by container: %v, want one each", fx.docker.envReads)
	}
}

// TestOneShotFailedReadIsNotStale: a one-shot command has no earlier read
// to show, so a failed read is an error and nothing is called stale.
func TestOneShotFailedReadIsNotStale(t *testing.T) {
	fx := newFixture(t)
	p := filepath.Join(fx.cfg.HostRoot, ecsconfig.UserConfigPath)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := fx.build(t).Once(context.Background(), false)
	if err == nil || st.ECSConfig.Stale || st.ECSConfig.Config != nil || st.ECSConfig.AWSVPCBlockIMDS || !strings.Contains(st.ECSConfig.Error, "FIFO") {
		t.Fatalf("err %v, ecs %+v", err, st.ECSConfig)
	}
}
