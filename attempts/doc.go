// Package attempts tells operators who tried to reach IMDS.
//
// Layer 1's blocking rules hand each blocked packet (rate-limited in the
// kernel, firewall.NFLogRate a second per rule) to NFLOG group
// firewall.NFLogGroup. A Reader per network namespace (the host's, and each
// awsvpc task's, since NFLOG groups are per namespace) reads them over
// netlink into one bounded queue; a full queue drops the event and counts
// it, and so does a gap in the kernel's sequence numbers (the socket's
// buffer overflowed), so a flood never blocks anyone.
//
// Each event is attributed against the owner Table the agent published
// last before the packet was read, never a later listing: bridged
// containers by the bridge port their frame came in on (the veth a
// container cannot choose; its address only when the port is not in the
// message), host-network containers by the cgroup id in the rule's prefix
// (each such rule matches one cgroup; NFLOG itself carries only a socket's
// uid and gid), awsvpc tasks by the namespace whose reader got it. An
// event whose port no table knows yet (a container that started and probed
// before the agent's next pass) waits for the next table, a bounded time;
// a port is one container's for its whole life, so a later table cannot
// name anybody else for it.
//
// The Recorder turns attempts into what operators see: a warning per
// container per interval (the first attempt of a container at once), the
// metric imdsguard_blocked_attempts_total with a cap on label sets, a ring
// of the last attempts for status, and an optional size-capped JSON audit
// log.
package attempts
