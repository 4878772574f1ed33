package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/e2e/sandbox"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
)

// TestHostNetwork: on a host where containers have their own cgroup v2
// group (the sandbox mounts the unified hierarchy for dockerd and the
// agent), --block-host-network blocks a host-network container while the
// host itself and the ECS agent container still read IMDS; the block
// holds through an inspect failure and a `docker restart`, and goes with
// the container.
func TestHostNetwork(t *testing.T) {
	e := newEnv(t, sandbox.Options{CgroupV2: true})
	s := e.s
	if v, err := s.Docker("info", "--format", "{{.CgroupVersion}}"); err != nil || v != "2" {
		t.Fatalf("docker info: cgroup version %q (%v), want 2", v, err)
	}
	// The ECS agent as ecs-init runs it: host network, the setting the
	// host's ecs.config asks for.
	if _, err := s.RunContainer(docker.ECSAgentName, "--network", "host", "-e", "ECS_AWSVPC_BLOCK_IMDS=true"); err != nil {
		t.Fatal(err)
	}
	arn := "arn:aws:ecs:us-east-1:123456789012:task/e2e/mon"
	args := append([]string{"--network", "host"}, ecsLabels(arn, "mon", "collector")...)
	id, err := s.RunContainer("hostc", args...)
	if err != nil {
		t.Fatal(err)
	}
	if cg := containerCgroup(t, s, "hostc"); cg != "/"+s.CgroupParent+"/"+id {
		t.Fatalf("hostc's cgroup v2 path %q, want a group of its own", cg)
	}

	// The agent talks to dockerd through a proxy that can fail inspects.
	proxy := newFaultProxy(t, s)
	e.startAgent(t, "--block-host-network", "--docker-host", proxy.host)
	var hc status.HostContainer
	waitFor(t, "host-network container reported", 30*time.Second, func() bool {
		st, err := status.QueryStatus(context.Background(), e.socket)
		if err != nil || st.HostNetwork == nil || !st.Firewall.IPv4.Enforced {
			return false
		}
		for _, c := range st.HostNetwork.Containers {
			if c.Name == "hostc" {
				hc = c
				return true
			}
		}
		return false
	})
	if hc.TaskARN != arn || hc.ECSContainer != "collector" {
		t.Fatalf("host container %+v", hc)
	}

	t.Run("blocked", func(t *testing.T) {
		st := e.status(t)
		if st.HostNetwork.Enforcement != "active" {
			t.Fatalf("host-network blocking %q on a cgroup v2 sandbox", st.HostNetwork.Enforcement)
		}
		waitFor(t, "host container blocked", 10*time.Second, func() bool {
			st = e.status(t)
			return hostContainer(st, "hostc").Blocked && st.Verdict == status.VerdictProtected
		})
		defer func() {
			if t.Failed() {
				t.Logf("last status: %s %v", st.Verdict, st.Reasons)
			}
		}()
		out, _ := e.cli(t, "status")
		t.Logf("imdsguard status:\n%s", out)
		e.assertHostBlocked(t, "hostc")

		// An inspect failure while the container runs: dockerd answers the
		// list but fails every inspect of hostc, and the event stream drops
		// (as when dockerd is overloaded), so the agent's cached details go
		// and it must inspect again. The rule stays.
		proxy.fail(id)
		waitFor(t, "the failed inspect seen", 30*time.Second, func() bool {
			return strings.Contains(hostContainer(e.status(t), "hostc").Reason, "kept from the last sync")
		})
		if n := proxy.failed(); n == 0 {
			t.Fatal("no inspect was failed")
		}
		if rules, _ := s.HostRun("iptables-save", "-t", "filter"); !strings.Contains(rules, "-m cgroup --path \"/"+s.CgroupParent+"/"+id+"\"") {
			t.Fatalf("the rule went with the failed inspect:\n%s", rules)
		}
		st = e.status(t)
		t.Logf("while inspects fail: %+v, last sync %+v", hostContainer(st, "hostc"), st.LastSync)
		e.assertHostBlocked(t, "hostc")
		proxy.heal()
		waitFor(t, "inspect works again", 30*time.Second, func() bool {
			c := hostContainer(e.status(t), "hostc")
			return c.Blocked && !strings.Contains(c.Reason, "kept")
		})

		// docker restart: a new cgroup in the same path. The kernel's
		// match resolved the old one, so the rule must be put in again.
		if _, err := s.Docker("restart", "-t", "1", "hostc"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "blocked after docker restart", 30*time.Second, func() bool { return e.hostBlocked(t, "hostc") })
		e.assertHostBlocked(t, "hostc")

		if _, err := s.Docker("rm", "-f", "hostc"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "rule removed on die", 10*time.Second, func() bool {
			rules, _ := s.HostRun("iptables-save", "-t", "filter")
			return !strings.Contains(rules, "-m cgroup")
		})

		// Blocking turned off: the chain and its OUTPUT jump go.
		if err := e.agent.Stop(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		e.startAgent(t)
		waitFor(t, "host chain removed with blocking off", 30*time.Second, func() bool {
			v4, _ := s.HostRun("iptables-save", "-t", "filter")
			v6, _ := s.HostRun("ip6tables-save", "-t", "filter")
			return strings.Contains(v4, "-A IMDS-GUARD ") && !strings.Contains(v4+v6, firewall.HostChain)
		})
		if hn := e.status(t).HostNetwork; hn == nil || hn.Enforcement != "off: --block-host-network is not set" {
			t.Fatalf("host network status with the chain gone: %+v", hn)
		}
	})
}

func hostContainer(st *status.Status, name string) status.HostContainer {
	if st.HostNetwork != nil {
		for _, c := range st.HostNetwork.Containers {
			if c.Name == name {
				return c
			}
		}
	}
	return status.HostContainer{}
}

// containerCgroup is the "0::" line of a container's /proc/PID/cgroup.
func containerCgroup(t *testing.T, s *sandbox.Sandbox, name string) string {
	t.Helper()
	pid, err := s.Docker("inspect", "-f", "{{.State.Pid}}", name)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/" + pid + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			return p
		}
	}
	t.Fatalf("/proc/%s/cgroup has no cgroup v2 line:\n%s", pid, b)
	return ""
}

// hostBlocked: the container is up (a neighbour answers) and its
// connection to IMDS gets no answer (DROP).
func (e *env) hostBlocked(t *testing.T, c string) bool {
	t.Helper()
	if err := e.s.Probe(c, sandbox.Neighbours[0].Addr, sandbox.Neighbours[0].Port, 3*time.Second); err != nil {
		return false
	}
	return errors.Is(e.s.Probe(c, sandbox.IMDSv4, 80, 2*time.Second), sandbox.ErrTimeout)
}

// assertHostBlocked: the container reads nothing from IMDS, while the host
// namespace itself and the ECS agent container read it.
func (e *env) assertHostBlocked(t *testing.T, c string) {
	t.Helper()
	if body, err := e.s.ReadIMDS(c); err == nil {
		t.Fatalf("blocked host-network container %s reads IMDS: %q", c, body)
	}
	if !e.hostBlocked(t, c) {
		t.Fatalf("%s: IMDS answers, or the neighbours do not", c)
	}
	if err := e.s.ProbeFromHost(sandbox.IMDSv4, 80, 3*time.Second); err != nil {
		t.Fatalf("the host namespace lost IMDS: %v", err)
	}
	if body, err := e.s.ReadIMDS(docker.ECSAgentName); err != nil || body != sandbox.InstanceID {
		t.Fatalf("the ECS agent container lost IMDS: %q %v", body, err)
	}
}

// faultProxy sits between the agent and dockerd and can make dockerd fail
// the inspects of one container: a real HTTP 500 from the Docker API, as a
// daemon under load answers, with no test hook in the agent. Failing also
// ends the event streams it carries, as a dockerd hiccup does, so the
// agent drops what it cached and asks again.
type faultProxy struct {
	host string

	mu      sync.Mutex
	target  string
	n       int
	streams map[*http.Request]context.CancelFunc
}

var inspectPath = regexp.MustCompile(`^(/v[0-9.]+)?/containers/([^/]+)/json$`)

func newFaultProxy(t *testing.T, s *sandbox.Sandbox) *faultProxy {
	t.Helper()
	sock := filepath.Join(s.Dir, "docker-proxy.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	daemon := strings.TrimPrefix(s.DockerHost, "unix://")
	p := &faultProxy{host: "unix://" + sock, streams: map[*http.Request]context.CancelFunc{}}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(&url.URL{Scheme: "http", Host: "docker"}) },
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", daemon)
		}},
		FlushInterval: -1, // the event stream
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if m := inspectPath.FindStringSubmatch(r.URL.Path); m != nil {
			p.mu.Lock()
			fail := p.target != "" && (m[2] == p.target || strings.HasPrefix(p.target, m[2]))
			if fail {
				p.n++
			}
			p.mu.Unlock()
			if fail {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusInternalServerError)
				fmt.Fprintln(w, `{"message":"injected by the e2e fault proxy"}`)
				return
			}
		}
		if strings.HasSuffix(r.URL.Path, "/events") {
			ctx, cancel := context.WithCancel(r.Context())
			r = r.WithContext(ctx)
			p.mu.Lock()
			p.streams[r] = cancel
			p.mu.Unlock()
			defer func() {
				p.mu.Lock()
				delete(p.streams, r)
				p.mu.Unlock()
				cancel()
			}()
		}
		rp.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return p
}

// fail makes every inspect of id fail and ends the open event streams.
func (p *faultProxy) fail(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = id
	for _, cancel := range p.streams {
		cancel()
	}
}

func (p *faultProxy) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = ""
}

func (p *faultProxy) failed() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}
