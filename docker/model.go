package docker

import (
	"net/netip"
	"strings"
)

// ECS labels Docker carries for ECS-managed containers.
const (
	LabelTaskARN       = "com.amazonaws.ecs.task-arn"
	LabelContainerName = "com.amazonaws.ecs.container-name"
	LabelTaskFamily    = "com.amazonaws.ecs.task-definition-family"
	// PauseContainerName is the ECS container name of an awsvpc task's
	// network-namespace holder.
	PauseContainerName = "~internal~ecs~pause"
	// ECSAgentName is the container ecs-init runs the ECS agent in.
	ECSAgentName = "ecs-agent"
)

// Network modes as Docker reports them in HostConfig.NetworkMode.
const (
	ModeBridge    = "bridge"
	ModeHost      = "host"
	ModeNone      = "none"
	ModeContainer = "container"
	ModeAWSVPC    = "awsvpc"
	ModeUserNet   = "user-defined"
)

// Container is what the agent needs to know of one running container.
type Container struct {
	ID          string
	Name        string
	NetworkMode string
	IPv4, IPv6  []netip.Addr
	Labels      map[string]string
	// ImageLabels are the labels of the container's image: a label the
	// container only inherited from its image cannot exempt it.
	ImageLabels map[string]string
	// ImageID is the container's image, for its labels; Image its name
	// as Docker lists it.
	ImageID, Image string
	// Ports are the bridge ports (host-side veths) the container's
	// addresses live behind, found through its network namespace; only
	// for exemption candidates, and only what could be proven.
	Ports map[netip.Addr]BridgePort
	// PortErr says why Ports could not be found.
	PortErr string
	// Details is the inspect of a container a sync must know more of:
	// awsvpc pause containers and their joiners, host-network containers
	// and theirs (the ECS agent among them). Nil when not asked for, or
	// with DetailsErr when the inspect failed.
	Details    *Details
	DetailsErr string
	// Env is the ECS agent container's configured environment ("K=V"),
	// read once per container; EnvErr says why it could not be.
	Env    []string
	EnvErr string
}

// BridgePort is a container interface's host side.
type BridgePort struct {
	Name   string `json:"name"`   // host-side veth, the bridge port
	Bridge string `json:"bridge"` // the bridge it is enslaved to
}

// Details are what only an inspect tells: asked for only for awsvpc pause
// containers, their joiners, host-network containers and exemption
// candidates, so a host with hundreds of bridged containers costs one list.
type Details struct {
	Pid        int
	SandboxKey string
	// NetAdmin: CAP_NET_ADMIN (or ALL) added, or privileged. Such a
	// container can delete its namespace's blackhole routes.
	NetAdmin bool
}

// ModeClass folds Docker's network mode strings into the classes that
// decide protection: "default" and named networks are bridges too; a
// "none" container with an ECS task ARN is an awsvpc pause container.
func ModeClass(c Container) (class, target string) {
	m := c.NetworkMode
	switch {
	case m == "" || m == "default" || m == ModeBridge:
		return ModeBridge, ""
	case m == ModeHost:
		return ModeHost, ""
	case m == ModeNone:
		if c.Labels[LabelTaskARN] != "" {
			return ModeAWSVPC, ""
		}
		return ModeNone, ""
	case strings.HasPrefix(m, "container:"):
		return ModeContainer, strings.TrimPrefix(m, "container:")
	}
	return ModeUserNet, ""
}

// Index finds containers by ID, ID prefix or name, as Docker resolves
// container:<target>.
type Index struct {
	byID, byName map[string]Container
}

// NewIndex indexes a listing.
func NewIndex(cs []Container) Index {
	ix := Index{byID: make(map[string]Container, len(cs)), byName: make(map[string]Container, len(cs))}
	for _, c := range cs {
		ix.byID[c.ID] = c
		ix.byName[c.Name] = c
	}
	return ix
}

// Find resolves a container:<target> target.
func (ix Index) Find(target string) (Container, bool) {
	if c, ok := ix.byID[target]; ok {
		return c, true
	}
	if c, ok := ix.byName[target]; ok {
		return c, true
	}
	for id, c := range ix.byID {
		if strings.HasPrefix(id, target) {
			return c, true
		}
	}
	return Container{}, false
}

// Owner follows container:<target> chains to the container that owns the
// network namespace.
func (ix Index) Owner(c Container) (Container, bool) {
	for range 8 {
		class, target := ModeClass(c)
		if class != ModeContainer {
			return c, true
		}
		next, ok := ix.Find(target)
		if !ok {
			return Container{}, false
		}
		c = next
	}
	return Container{}, false
}

// Short is the 12-character form of a container ID.
func Short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
