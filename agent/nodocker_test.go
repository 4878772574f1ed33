package agent

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
)

// guardedDocker fails the test on any Docker call once frozen. Its watch
// reports the connection and never an event, so after the lister's first
// snapshot nothing but a sync could call it.
type guardedDocker struct {
	inner  *inspectingDocker
	t      *testing.T
	mu     sync.Mutex
	frozen bool
	calls  []string
}

func (g *guardedDocker) call(what string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, what)
	if g.frozen {
		g.t.Errorf("a sync called Docker: %s", what)
	}
}

func (g *guardedDocker) freeze() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.frozen = true
	return len(g.calls)
}

func (g *guardedDocker) Containers(ctx context.Context) ([]docker.Container, error) {
	g.call("list")
	return g.inner.Containers(ctx)
}

func (g *guardedDocker) Env(ctx context.Context, id string) ([]string, error) {
	g.call("env " + id)
	return g.inner.Env(ctx, id)
}

func (g *guardedDocker) Inspect(ctx context.Context, id string) (docker.Details, error) {
	g.call("inspect " + id)
	return g.inner.Inspect(ctx, id)
}

func (g *guardedDocker) ImageLabels(ctx context.Context, image string) (map[string]string, error) {
	g.call("image " + image)
	return g.inner.ImageLabels(ctx, image)
}

func (g *guardedDocker) Watch(ctx context.Context, _ func(), connected func(error)) {
	connected(nil)
	<-ctx.Done()
}

// TestSyncCallsNoDocker: with everything that needs more than a list on
// the host (the ECS agent's environment, an awsvpc task and its joiner,
// host-network containers, an exempt bridged container), the daemon's syncs
// — repairs of drift and resyncs — make no Docker call, with and without
// --block-host-network: the lister's snapshot holds what they need.
func TestSyncCallsNoDocker(t *testing.T) {
	for _, block := range []bool{false, true} {
		t.Run(fmt.Sprintf("block-host-network=%v", block), func(t *testing.T) {
			fx := hostFixture(t, nil)
			fx.cfg.BlockHostNetwork = block
			fx.cfg.AWSVPCMode = ECSModeEnforce
			fx.cfg.ExemptLabel = ExampleExemptLabel
			aws := awsvpcFixture(t, ECSModeEnforce, true)
			fx.docker.containers = append(fx.docker.containers, aws.docker.containers...)
			for id, d := range aws.insp {
				fx.insp[id] = d
			}
			fx.ns = aws.ns
			fx.docker.env["agentagentagent0"] = []string{"ECS_AWSVPC_BLOCK_IMDS=true"}
			web := docker.Container{ID: "webwebwebwebweb0", Name: "web", NetworkMode: "bridge", ImageID: "sha256:img",
				IPv4: []netip.Addr{netip.MustParseAddr("172.17.0.9")}, Labels: map[string]string{"imdsguard.allow-imds": "true"}}
			fx.docker.containers = append(fx.docker.containers, web)
			accept := fx.exemptable(web, 77)
			var g *guardedDocker
			fx.wrap = func(s docker.Source) docker.Source {
				g = &guardedDocker{inner: s.(*inspectingDocker), t: t}
				return g
			}
			fx.start(t)
			v4 := fx.fakes[firewall.IPv4]
			changed := fx.watcher(t)
			eventually(t, "a sync over the first snapshot", func() bool {
				st := fx.agent.Status()
				return len(st.Containers) == len(fx.docker.containers) && st.ECSConfig.RunningAgent != nil &&
					st.AWSVPC != nil && len(st.AWSVPC.Tasks) == 1 && st.AWSVPC.Tasks[0].Protected
			})
			eventually(t, "the exemption", func() bool { return strings.Contains(v4.Dump(), accept) })
			before := g.freeze()
			if before == 0 {
				t.Fatal("the lister never called Docker")
			}
			for i := range 3 {
				v4.Flush(firewall.Forward)
				changed()
				eventually(t, "repair", func() bool { return fx.agent.Status().Repairs >= uint64(i+1) })
				aws.ns.(*fakeNS).deleteRoute("/var/run/docker/netns/pause")
				fx.agent.Trigger()
				at := fx.agent.Status().LastSync.At
				eventually(t, "a resync", func() bool { return fx.agent.Status().LastSync.At.After(at) })
			}
			st := fx.agent.Status()
			if st.HostNetwork.Enforcement != map[bool]string{true: "active", false: "off: --block-host-network is not set"}[block] {
				t.Fatalf("host network %q", st.HostNetwork.Enforcement)
			}
			if !st.AWSVPC.Tasks[0].Protected || len(st.AWSVPC.Tasks[0].NetAdmin) == 0 {
				t.Fatalf("task %+v", st.AWSVPC.Tasks[0])
			}
		})
	}
}
