// Package docker owns every call imdsguard makes to the Docker daemon: the
// client, the event stream, the lister, the inspect and image caches, and
// the container model the rest of imdsguard reads. It takes a snapshot of
// the running containers in the lister's own loop; a sync reads that
// snapshot and never calls Docker. It knows nothing of firewalls, routes
// or verdicts, and must not decide whether a container is protected.
package docker

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/client"
	"github.com/sirupsen/logrus"
)

// Source is what a snapshot needs of the Docker daemon; Client is the
// real one, tests pass fakes.
type Source interface {
	// Containers lists the running containers.
	Containers(ctx context.Context) ([]Container, error)
	// Env returns a container's configured environment ("K=V").
	Env(ctx context.Context, id string) ([]string, error)
	// Watch calls changed on every relevant event and on every change of
	// connection, and connected with nil or the reason the daemon cannot be
	// reached, until ctx ends.
	Watch(ctx context.Context, changed func(), connected func(error))
}

// Inspector is implemented by Sources that can inspect. It is separate so
// that a Source without it still enforces the bridge block; the containers
// that need details are then reported unknown.
type Inspector interface {
	Inspect(ctx context.Context, id string) (Details, error)
}

// ImageLabeler is implemented by Sources that can read an image's labels.
type ImageLabeler interface {
	ImageLabels(ctx context.Context, image string) (map[string]string, error)
}

// Timeout bounds every call, so a hung daemon cannot hang the lister.
const Timeout = 5 * time.Second

// dieResync is how long after a "die" event the follow-up sync runs.
const dieResync = 150 * time.Millisecond

// Client is Source over the moby client. The client negotiates the API
// version down to the daemon's (1.40 and up: Docker 19.03 onwards).
type Client struct {
	cli *client.Client
	log *logrus.Entry

	// cache holds inspect results by container ID. An event for the
	// container drops its entry (a restart changes the pid and namespace),
	// and so does a list without it; gen stops an inspect that raced with
	// an event from storing what it read before the event.
	mu     sync.Mutex
	cache  map[string]Details
	gen    uint64
	images map[string]map[string]string // labels by image ID
}

// New connects lazily to the daemon at host.
func New(host string, log *logrus.Entry) (*Client, error) {
	cli, err := client.New(client.WithHost(host))
	if err != nil {
		return nil, fmt.Errorf("docker client for %s: %w", host, err)
	}
	return &Client{cli: cli, log: log, cache: map[string]Details{}, images: map[string]map[string]string{}}, nil
}

// Inspect returns a running container's details, from the cache when the
// container has had no event since it was last inspected.
func (d *Client) Inspect(ctx context.Context, id string) (Details, error) {
	d.mu.Lock()
	det, ok := d.cache[id]
	gen := d.gen
	d.mu.Unlock()
	if ok {
		return det, nil
	}
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	res, err := d.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return Details{}, fmt.Errorf("inspecting %s: %w", Short(id), err)
	}
	c := res.Container
	if c.State == nil || !c.State.Running {
		return Details{}, fmt.Errorf("container %s is not running", Short(id))
	}
	det.Pid = c.State.Pid
	if c.NetworkSettings != nil {
		det.SandboxKey = c.NetworkSettings.SandboxKey
	}
	if hc := c.HostConfig; hc != nil {
		det.NetAdmin = hc.Privileged || slices.ContainsFunc(hc.CapAdd, func(c string) bool {
			c = strings.ToUpper(strings.TrimPrefix(strings.ToUpper(c), "CAP_"))
			return c == "NET_ADMIN" || c == "ALL"
		})
	}
	d.mu.Lock()
	if d.gen == gen {
		d.cache[id] = det
	}
	d.mu.Unlock()
	return det, nil
}

// forget drops cached details: of one container, or of all with "".
func (d *Client) forget(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gen++
	if id == "" {
		clear(d.cache)
		return
	}
	delete(d.cache, id)
}

func (d *Client) Containers(ctx context.Context) ([]Container, error) {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	res, err := d.cli.ContainerList(ctx, client.ContainerListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing containers: %w", err)
	}
	out := make([]Container, 0, len(res.Items))
	for _, s := range res.Items {
		c := Container{
			ID:          s.ID,
			NetworkMode: s.HostConfig.NetworkMode,
			Labels:      s.Labels,
			ImageID:     s.ImageID,
			Image:       s.Image,
		}
		if len(s.Names) > 0 {
			c.Name = strings.TrimPrefix(s.Names[0], "/")
		}
		if s.NetworkSettings != nil {
			names := make([]string, 0, len(s.NetworkSettings.Networks))
			for n := range s.NetworkSettings.Networks {
				names = append(names, n)
			}
			sort.Strings(names) // stable output for status and tests
			for _, n := range names {
				ep := s.NetworkSettings.Networks[n]
				if ep == nil {
					continue
				}
				if ep.IPAddress.IsValid() {
					c.IPv4 = append(c.IPv4, ep.IPAddress)
				}
				if ep.GlobalIPv6Address.IsValid() {
					c.IPv6 = append(c.IPv6, ep.GlobalIPv6Address)
				}
			}
		}
		out = append(out, c)
	}
	d.mu.Lock()
	maps.DeleteFunc(d.cache, func(id string, _ Details) bool {
		return !slices.ContainsFunc(out, func(c Container) bool { return c.ID == id })
	})
	d.mu.Unlock()
	return out, nil
}

// ImageLabels returns an image's labels. Images are content-addressed, so
// an ID's labels never change and stay cached.
func (d *Client) ImageLabels(ctx context.Context, image string) (map[string]string, error) {
	d.mu.Lock()
	labels, ok := d.images[image]
	d.mu.Unlock()
	if ok {
		return labels, nil
	}
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	res, err := d.cli.ImageInspect(ctx, image)
	if err != nil {
		return nil, fmt.Errorf("inspecting image %s: %w", Short(strings.TrimPrefix(image, "sha256:")), err)
	}
	labels = map[string]string{}
	if res.Config != nil {
		maps.Copy(labels, res.Config.Labels)
	}
	d.mu.Lock()
	if len(d.images) > 1024 {
		clear(d.images) // bounded: old images come and go on a long-lived host
	}
	d.images[image] = labels
	d.mu.Unlock()
	return labels, nil
}

func (d *Client) Env(ctx context.Context, id string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	res, err := d.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return nil, fmt.Errorf("inspecting %s: %w", id, err)
	}
	if res.Container.Config == nil {
		return nil, nil
	}
	return res.Container.Config.Env, nil
}

// Watch follows the event stream. A dockerd restart ends the stream, and
// events in the gap are lost, so every (re)subscription is followed by a
// full resync (the changed call) rather than by replaying events.
func (d *Client) Watch(ctx context.Context, changed func(), connected func(error)) {
	filters := make(client.Filters).
		Add("type", "container", "network").
		Add("event", "start", "die", "destroy", "create", "connect", "disconnect")
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		pctx, cancel := context.WithTimeout(ctx, Timeout)
		// ForceNegotiate: the daemon may have been upgraded or downgraded
		// while it was away.
		_, err := d.cli.Ping(pctx, client.PingOptions{NegotiateAPIVersion: true, ForceNegotiate: true})
		cancel()
		if err != nil {
			connected(fmt.Errorf("docker daemon unreachable: %w", err))
			changed()
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		ectx, cancel := context.WithCancel(ctx)
		res := d.cli.Events(ectx, client.EventsListOptions{Filters: filters})
		// Events in the gap are lost: nothing cached may outlive it.
		d.forget("")
		connected(nil)
		changed()
		backoff = 100 * time.Millisecond
	stream:
		for {
			select {
			case <-ctx.Done():
				break stream
			case m := <-res.Messages:
				d.log.WithFields(logrus.Fields{"type": m.Type, "action": m.Action, "id": Short(m.Actor.ID)}).Debug("docker event")
				if m.Type == "container" {
					d.forget(m.Actor.ID)
				}
				changed()
				if m.Type == "container" && m.Action == "die" {
					// dockerd updates the view ContainerList reads only after
					// "die" and after releasing the address; one more sync a
					// little later is sure to see the container gone (and
					// its exemption withdrawn) whatever the throttle's phase.
					time.AfterFunc(dieResync, changed)
				}
			case err := <-res.Err:
				if ctx.Err() == nil {
					d.log.WithError(err).Info("docker event stream ended; reconnecting")
					connected(fmt.Errorf("docker event stream ended: %w", err))
					changed()
				}
				break stream
			}
		}
		cancel()
	}
}
