// Package sandbox simulates an Amazon ECS container instance with two
// network namespaces, so end-to-end tests can run the agent against a real
// dockerd and a mock instance metadata service without any traffic to
// 169.254.0.0/16 or fd00:ec2::/32 ever leaving the machine.
//
// Topology (each sandbox uses a random 6-hex suffix XXXXXX):
//
//	 netns igh-XXXXXX ("host")                netns igi-XXXXXX ("IMDS")
//	+------------------------------+        +------------------------------------+
//	| dockerd (+containerd, shims) |        | lo: 169.254.169.254  fd00:ec2::254  |
//	| docker0 172.17.0.1/16        |        |     ec2-metadata-mock :80 (v4, v6)  |
//	|         fd00:ec2:d0c::1/64   |        | lo: 169.254.170.2   (ECS task creds)|
//	| hv0 169.254.100.1/30  ------------------ iv0 169.254.100.2/30               |
//	|     fd00:ec2:1::1/64         |        |     fd00:ec2:1::2/64                |
//	| default via IMDS (v4 + v6)   |        | lo: 169.254.169.123 fd00:ec2::23    |
//	| ip_forward=1, v6 forwarding=1|        | lo: 169.254.169.253 fd00:ec2::253   |
//	+------------------------------+        | default via host (v4 + v6)          |
//	                                        +------------------------------------+
//
// dockerd runs in the host namespace with --ipv6 --fixed-cidr-v6
// fd00:ec2:d0c::/64; it masquerades container IPv4, while IPv6 is plainly
// routed (dockerd 20.10 does not manage ip6tables), hence the IMDS
// namespace's default routes back to the host. The IMDS namespace does not
// forward, so anything not addressed to it is dropped there.
//
// The metadata service is github.com/aws/amazon-ec2-metadata-mock, one
// process per address family (it binds a single host:port). The
// neighbours (ECS credentials, time sync, DNS: see [Neighbours]) are
// in-process TCP responders listening inside the IMDS namespace that answer
// one line naming themselves and close.
//
// With Options.DockerRoot, dockerd, the agent and every host-namespace
// command run from a Debian root with a newer docker.io (built by `make
// docker-roots`; see [RootExec]), so they share that root's iptables. With
// Options.Firewalld a real firewalld runs in the host namespace on a
// private system bus before dockerd starts (firewalld.go). Every process
// the sandbox starts gets DBUS_SYSTEM_BUS_ADDRESS pointing into the sandbox
// directory, so no sandbox dockerd ever talks to the machine's firewalld.
//
// Everything a sandbox creates lives under one temporary directory (dockerd
// data/exec roots, sockets, logs, the busybox image tarball) or in its two
// namespaces; [Sandbox.Close] kills processes by pid, deletes the
// namespaces, unmounts whatever dockerd left mounted under the directory,
// removes the per-sandbox cgroup parent and the directory. Sandboxes left
// behind by a killed test binary are swept by the next [New].
package sandbox
