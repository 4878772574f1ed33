#!/bin/bash
# Stand-in for dockerd: at the moment Docker would start, record whether
# rule 1 of FORWARD (both families) is imdsguard's jump to IMDS-GUARD (it
# never creates DOCKER-USER, which is Docker's).
rule1() {
	if [ "$("$1" -w 5 -S FORWARD 2>/dev/null | sed -n 2p)" = "-A FORWARD -j IMDS-GUARD" ]; then
		echo rule1
	elif "$1" -w 5 -C FORWARD -j IMDS-GUARD 2>/dev/null; then
		echo elsewhere
	else
		echo absent
	fi
}
echo "$(date +%s.%N) jump4=$(rule1 iptables) jump6=$(rule1 ip6tables)" >>/var/lib/imdsguard-test/docker-starts
