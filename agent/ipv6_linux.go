package agent

import (
	"errors"

	"golang.org/x/sys/unix"
)

// kernelIPv6 reports "" when the kernel has IPv6, else why not: with
// ipv6.disable=1 (or no IPv6 built in) no AF_INET6 socket can be made,
// ip6tables has nothing to load into, and no container can send to
// fd00:ec2::254, so the IPv6 block does not apply.
func kernelIPv6() string {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
		return ""
	}
	if errors.Is(err, unix.EAFNOSUPPORT) {
		return "the kernel has no IPv6 (an AF_INET6 socket: " + err.Error() + ")"
	}
	// Any other refusal (seccomp, EMFILE) is no proof: block as asked.
	return ""
}
