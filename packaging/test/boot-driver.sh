#!/bin/bash
# Runs inside the booted test container: waits for the boot to finish, runs
# the scenario named in /etc/imdsguard-test/scenario, writes KEY=VALUE lines
# to /var/lib/imdsguard-test/SCENARIO.txt and powers the container off.
set -u
scenario=$(cat /etc/imdsguard-test/scenario)
dir=/var/lib/imdsguard-test
tmp=$dir/$scenario.txt.tmp
: >"$tmp"
r() { echo "$1=$2" >>"$tmp"; }
prop() { systemctl show -p "$2" --value "$1"; }
jump() {
	if [ "$("$1" -w 5 -S FORWARD 2>/dev/null | sed -n 2p)" = "-A FORWARD -j IMDS-GUARD" ]; then
		echo rule1
	elif "$1" -w 5 -C FORWARD -j IMDS-GUARD 2>/dev/null; then
		echo elsewhere
	else
		echo absent
	fi
}
ready() { [ "$(prop imdsguard.service ActiveEnterTimestampMonotonic)" -gt 0 ] 2>/dev/null && echo yes || echo no; }
docker_jump() { sed -n 's/.* jump4=\([a-z0-9]*\) .*/\1/p' $dir/docker-starts 2>/dev/null | tail -1; }

timeout 120 systemctl is-system-running --wait >/dev/null 2>&1
r system "$(systemctl is-system-running)"

case "$scenario" in
lifecycle)
	r imdsguard.type "$(prop imdsguard.service Type)"
	r imdsguard.watchdog_usec "$(prop imdsguard.service WatchdogUSec)"
	r status_text "$(prop imdsguard.service StatusText)"
	ia=$(prop imdsguard.service ActiveEnterTimestampMonotonic)
	ds=$(prop docker.service InactiveExitTimestampMonotonic)
	r imdsguard.active_enter_us "$ia"
	r docker.start_us "$ds"
	if [ "$ia" -gt 0 ] && [ "$ds" -gt 0 ] && [ "$ia" -le "$ds" ]; then r ready_before_docker yes; else r ready_before_docker no; fi
	pid0=$(prop imdsguard.service MainPID)
	# Longer than WatchdogSec: still running means the pings arrive.
	sleep 40
	r healthy_after_40s.nrestarts "$(prop imdsguard.service NRestarts)"
	r healthy_after_40s.same_pid "$([ "$(prop imdsguard.service MainPID)" = "$pid0" ] && echo yes || echo no)"
	# Hang the loop: systemd must kill and restart it.
	kill -STOP "$pid0"
	restarted=no
	for _ in $(seq 1 70); do
		sleep 1
		p=$(prop imdsguard.service MainPID)
		if [ "$p" != "$pid0" ] && [ "$p" != 0 ] && [ "$(prop imdsguard.service ActiveState)" = active ]; then
			restarted=yes
			break
		fi
	done
	r watchdog_restart "$restarted"
	r watchdog.nrestarts "$(prop imdsguard.service NRestarts)"
	if journalctl -b -u imdsguard.service | grep -q 'Watchdog timeout'; then r watchdog_journal yes; else r watchdog_journal no; fi
	pid=$(prop imdsguard.service MainPID)
	# CAP_CHOWN(0), CAP_NET_ADMIN(12), CAP_NET_RAW(13)
	bnd=$(awk '/^CapBnd:/ {print $2}' "/proc/$pid/status")
	r sandbox.cap_bnd "$bnd"
	r sandbox.cap_bnd_ok "$([ "$bnd" = 0000000000283001 ] && echo yes || echo no)"
	systemctl stop imdsguard.service
	r after_stop.state "$(prop imdsguard.service ActiveState)"
	r after_stop.jump4 "$(jump iptables)"
	r after_stop.jump6 "$(jump ip6tables)"
	if iptables -w 5 -S IMDS-GUARD 2>/dev/null | grep -q '169.254.169.254'; then r after_stop.imds_rule4 yes; else r after_stop.imds_rule4 no; fi
	;;
fail-open | strict-fail)
	r docker.state "$(prop docker.service ActiveState)"
	r docker.started "$([ -s $dir/docker-starts ] && echo yes || echo no)"
	r imdsguard.ready "$(ready)"
	;;
strict-ok)
	r docker.state "$(prop docker.service ActiveState)"
	r docker.jump "$(docker_jump)"
	;;
pkg)
	dpkg -r imdsguard >$dir/pkg-remove.log 2>&1
	r remove.state "$(prop imdsguard.service ActiveState)"
	r remove.jump4 "$(jump iptables)"
	if iptables -w 5 -S IMDS-GUARD >/dev/null 2>&1; then r remove.chain4 present; else r remove.chain4 absent; fi
	dpkg -i /root/imdsguard.deb >$dir/pkg-install.log 2>&1
	r install.state "$(prop imdsguard.service ActiveState)"
	r install.jump4 "$(jump iptables)"
	pid0=$(prop imdsguard.service MainPID)
	dpkg -i /root/imdsguard.deb >$dir/pkg-upgrade.log 2>&1
	r upgrade.state "$(prop imdsguard.service ActiveState)"
	r upgrade.jump4 "$(jump iptables)"
	r upgrade.restarted "$([ "$(prop imdsguard.service MainPID)" != "$pid0" ] && echo yes || echo no)"
	;;
boothook-*)
	r docker.jump "$(docker_jump)"
	r imdsguard.enabled "$(systemctl is-enabled imdsguard.service)"
	r imdsguard.state "$(prop imdsguard.service ActiveState)"
	r ecs.block_imds_lines "$(grep -c '^ECS_AWSVPC_BLOCK_IMDS=true$' /etc/ecs/ecs.config)"
	r ecs.cluster_lines "$(grep -c '^ECS_CLUSTER=' /etc/ecs/ecs.config)"
	r ecs.cluster "$(sed -n 's/^ECS_CLUSTER=//p' /etc/ecs/ecs.config)"
	;;
esac

r imdsguard.state_end "$(prop imdsguard.service ActiveState)"
r docker.state_end "$(prop docker.service ActiveState)"
journalctl -b --no-pager -u imdsguard.service -u docker.service -u cloud-init-standin.service >"$dir/$scenario.journal" 2>&1
mv "$tmp" "$dir/$scenario.txt"
systemctl poweroff --no-block
