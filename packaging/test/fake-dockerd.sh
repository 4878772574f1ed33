#!/bin/bash
# Stand-in for dockerd: at the moment Docker would start, record whether
# rule 1 of DOCKER-USER (both families) is the jump to IMDS-GUARD.
rule1() {
	if [ "$("$1" -w 5 -S DOCKER-USER 2>/dev/null | sed -n 2p)" = "-A DOCKER-USER -j IMDS-GUARD" ]; then
		echo rule1
	elif "$1" -w 5 -C DOCKER-USER -j IMDS-GUARD 2>/dev/null; then
		echo elsewhere
	else
		echo absent
	fi
}
echo "$(date +%s.%N) jump4=$(rule1 iptables) jump6=$(rule1 ip6tables)" >>/var/lib/imdsguard-test/docker-starts
