package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/imdsguard/imdsguard/agent"
	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
)

// fakeDocker serves a fixed container list.
type fakeDocker struct{ cs []docker.Container }

func (d fakeDocker) Containers(context.Context) ([]docker.Container, error) { return d.cs, nil }
func (d fakeDocker) Env(context.Context, string) ([]string, error) {
	return []string{"ECS_AWSVPC_BLOCK_IMDS=true"}, nil
}
func (d fakeDocker) Watch(ctx context.Context, _ func(), _ func(error)) { <-ctx.Done() }

// containers is a mix an ECS host has: bridged tasks, awsvpc tasks with
// their pause containers, containers sharing a namespace, host-network ones.
func containers(n int) []docker.Container {
	cs := []docker.Container{{ID: "agent0000000000000000", Name: docker.ECSAgentName, NetworkMode: docker.ModeHost}}
	for i := 1; i < n; i++ {
		c := docker.Container{ID: fmt.Sprintf("%064x", i), Name: fmt.Sprintf("task-%d", i)}
		switch i % 5 {
		case 0, 1:
			c.NetworkMode = "bridge"
			c.IPv4 = []netip.Addr{netip.AddrFrom4([4]byte{172, 17, byte(i >> 8), byte(i)})}
		case 2:
			c.NetworkMode = "none"
			c.Labels = map[string]string{docker.LabelTaskARN: "arn:aws:ecs:eu-west-1:1:task/c/" + fmt.Sprint(i), docker.LabelContainerName: docker.PauseContainerName}
		case 3:
			c.NetworkMode = "container:" + fmt.Sprintf("%064x", i-1)
		case 4:
			c.NetworkMode = "host"
		}
		cs = append(cs, c)
	}
	return cs
}

// BenchmarkDesiredState is one read-only pass of the agent over fakes with
// 500 containers: firewall check, ECS config evaluation, classification
// and verdict. No iptables or Docker I/O: this is the pure part of a sync.
func BenchmarkDesiredState(b *testing.B) {
	tables := map[firewall.Family]firewall.Tables{firewall.IPv4: firewall.NewFake(), firewall.IPv6: firewall.NewFake()}
	m := firewall.NewManager(firewall.Spec{Action: firewall.ActionDrop}, tables, firewall.IPv4, firewall.IPv6)
	ctx := context.Background()
	if _, err := m.Ensure(ctx); err != nil {
		b.Fatal(err)
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	a := agent.New(agent.Options{
		Config: agent.Config{HostRoot: b.TempDir(), IPv6: true, Action: firewall.ActionDrop, ECSConfigMode: agent.ECSModeCheck},
		Log:    logrus.NewEntry(log),
		Firewall: func() (agent.Firewall, firewall.Backend, error) {
			return m, firewall.Backend{Mode: "nft"}, nil
		},
		Docker: fakeDocker{containers(500)},
	})
	for b.Loop() {
		st, err := a.Once(ctx, false)
		if err != nil && !agent.IsPartial(err) {
			b.Fatal(err)
		}
		if len(st.Containers) != 500 {
			b.Fatalf("%d containers", len(st.Containers))
		}
	}
}
