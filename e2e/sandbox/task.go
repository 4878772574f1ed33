package sandbox

import (
	"context"
	"fmt"
	"strings"
)

// Task is a simulated awsvpc task: a pause container with --network none,
// given an "ENI" the way the ECS CNI plugins do: a veth whose other end is
// in the IMDS namespace, addressed, with the task's default route through
// it. Its namespace goes away with the pause container (and the veth with
// it), so Close cleans it up.
type Task struct {
	Pause     string // the pause container's name
	NetNSPath string // /proc/PID/ns/net of the pause container
	// IMDSSide is the ENI's far end: the next hop a route around the
	// blackhole would use.
	IMDSSide string
}

// NewTask starts the pause container name (with dockerArgs, e.g. the ECS
// labels) and wires task number n (1..62: a TEST-NET-1 /30 each, which
// exists only in the two sandbox namespaces). With blackhole it adds the
// IMDS blackhole route ECS adds with ECS_AWSVPC_BLOCK_IMDS=true.
func (s *Sandbox) NewTask(name string, n int, blackhole bool, dockerArgs ...string) (*Task, error) {
	if n < 1 || n > 62 {
		return nil, fmt.Errorf("sandbox: task number %d out of 1..62", n)
	}
	if _, err := s.RunContainer(name, append([]string{"--network", "none"}, dockerArgs...)...); err != nil {
		return nil, err
	}
	pid, err := s.Docker("inspect", "-f", "{{.State.Pid}}", name)
	if err != nil {
		return nil, err
	}
	pid = strings.TrimSpace(pid)
	t := &Task{Pause: name, NetNSPath: "/proc/" + pid + "/ns/net", IMDSSide: fmt.Sprintf("192.0.2.%d", 4*n+1)}
	taskSide, veth := fmt.Sprintf("192.0.2.%d", 4*n+2), fmt.Sprintf("eni%d", n)
	steps := [][]string{
		{s.IMDSNetNSPath, "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth1", "netns", pid},
		{s.IMDSNetNSPath, "ip", "addr", "add", t.IMDSSide + "/30", "dev", veth},
		{s.IMDSNetNSPath, "ip", "link", "set", veth, "up"},
		{t.NetNSPath, "ip", "addr", "add", taskSide + "/30", "dev", "eth1"},
		{t.NetNSPath, "ip", "link", "set", "eth1", "up"},
		{t.NetNSPath, "ip", "route", "add", "default", "via", t.IMDSSide, "dev", "eth1"},
	}
	if blackhole {
		steps = append(steps, []string{t.NetNSPath, "ip", "route", "replace", "blackhole", IMDSv4 + "/32"})
	}
	if err := runSteps(name, steps); err != nil {
		return nil, err
	}
	return t, nil
}

// AddIPv6 gives task number n's ENI an IPv6 ULA /64 on both ends and the
// task its IPv6 default route through it.
func (s *Sandbox) AddIPv6(t *Task, n int) error {
	imdsSide := fmt.Sprintf("fd00:ec2:5:%d::1", n)
	steps := [][]string{
		{t.NetNSPath, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.eth1.disable_ipv6=0"},
		{s.IMDSNetNSPath, "ip", "addr", "add", imdsSide + "/64", "dev", fmt.Sprintf("eni%d", n), "nodad"},
		{t.NetNSPath, "ip", "addr", "add", fmt.Sprintf("fd00:ec2:5:%d::2/64", n), "dev", "eth1", "nodad"},
		{t.NetNSPath, "ip", "-6", "route", "add", "default", "via", imdsSide, "dev", "eth1"},
	}
	return runSteps(t.Pause, steps)
}

// runSteps runs each step (a namespace path, then the command) of task
// name's wiring in order, stopping at the first that fails.
func runSteps(name string, steps [][]string) error {
	for _, st := range steps {
		if _, err := nsRun(context.Background(), st[0], st[1], st[2:]...); err != nil {
			return fmt.Errorf("task %s: %w", name, err)
		}
	}
	return nil
}

// Run runs a short command in the task's network namespace, as a process
// of the task with NET_ADMIN would.
func (t *Task) Run(name string, args ...string) (string, error) {
	return nsRun(context.Background(), t.NetNSPath, name, args...)
}
