#!/bin/bash
# Boots a Debian tree with systemd-nspawn (own network namespace, so the
# host's firewall is never touched), with imdsguard installed from the .deb
# and a stand-in docker.service that records, as it starts, whether the
# IMDS-GUARD jump is already rule 1 of FORWARD.
#
# usage: boot.sh DEB [PARTS_DIR]   PARTS_DIR: user data parts split by
# parse_userdata.py (boothook + ECS script), for the boothook scenario.
# Exit 0 pass, 1 fail, 77 skipped (with the reason on stdout).
set -euo pipefail

deb=$(readlink -f "$1")
parts=${2:-}
repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/packaging/test
cache=${IMDSGUARD_TEST_CACHE:-/var/cache/imdsguard-test}
suite=bookworm
boots=${BOOTS:-10}

skip() {
	echo "boot-test: SKIP: $*"
	exit 77
}
[ "$(id -u)" = 0 ] || skip "needs root (systemd-nspawn, debootstrap)"
command -v systemd-nspawn >/dev/null || skip "systemd-nspawn missing (apt-get install systemd-container)"
command -v debootstrap >/dev/null || skip "debootstrap missing"

# Same mirror apt uses here.
mirror() {
	local m
	m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
	[ -n "$m" ] || m=$(awk '$1 == "deb" && $2 !~ /^\[/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
	echo "${m:-http://deb.debian.org/debian}"
}

# Cached tree; built in a temp dir and renamed, so an interrupted
# debootstrap never leaves a tree that looks complete.
rootfs=$cache/rootfs-$suite
if [ ! -x "$rootfs/usr/lib/systemd/systemd" ] || [ ! -e "$rootfs/usr/sbin/iptables" ]; then
	mkdir -p "$cache"
	rm -rf "$rootfs.tmp"
	echo "boot-test: debootstrap $suite from $(mirror) into $rootfs (cached for later runs)"
	debootstrap --variant=minbase --include=systemd,systemd-sysv,iptables,dbus \
		"$suite" "$rootfs.tmp" "$(mirror)" >"$cache/debootstrap.log" 2>&1 ||
		{ tail -20 "$cache/debootstrap.log"; echo "boot-test: debootstrap failed"; exit 1; }
	mv "$rootfs.tmp" "$rootfs"
fi

work=$(mktemp -d /var/tmp/imdsguard-boot.XXXXXX)
root=$work/root
nspawn_pid=
cleanup() {
	if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
		kill "$nspawn_pid" 2>/dev/null || true
		sleep 2
		kill -9 "$nspawn_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT
cp -a "$rootfs" "$root"

# Can nspawn boot systemd here at all? (This host's PID 1 is not systemd and
# its cgroups are v1 hybrid.) A trivial boot that powers off right away.
nspawn() {
	systemd-nspawn -q -D "$root" --private-network --register=no --keep-unit "$@"
}
run_in() { nspawn --pipe -- "$@" </dev/null; }

install -d "$root/etc/imdsguard-test" "$root/var/lib/imdsguard-test"
install -m 0755 "$here/boot-driver.sh" "$root/usr/local/sbin/imdsguard-test-driver"
install -m 0755 "$here/fake-dockerd.sh" "$root/usr/local/sbin/fake-dockerd"
cat >"$root/etc/systemd/system/imdsguard-test-driver.service" <<'UNIT'
[Unit]
Description=imdsguard boot test driver
After=multi-user.target
[Service]
# simple: its start job completes at once, so it can wait for the boot.
Type=simple
ExecStart=/usr/local/sbin/imdsguard-test-driver
StandardOutput=journal+console
[Install]
WantedBy=multi-user.target
UNIT
# Ordering like the real docker.service; nothing here mentions imdsguard.
cat >"$root/etc/systemd/system/docker.service" <<'UNIT'
[Unit]
Description=stand-in for dockerd: records whether the IMDS block is in place
After=network-online.target containerd.service time-set.target
Wants=network-online.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/fake-dockerd
[Install]
WantedBy=multi-user.target
UNIT
echo imdsguard-test >"$root/etc/hostname"
ln -sf /dev/null "$root/etc/systemd/system/console-getty.service"
ln -sf /dev/null "$root/etc/systemd/system/getty@.service"
for t in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer dpkg-db-backup.timer; do
	ln -sf /dev/null "$root/etc/systemd/system/$t"
done
run_in systemctl enable docker.service imdsguard-test-driver.service >/dev/null 2>&1

# Install from the .deb before the first boot, as when baking an image:
# postinst enables the unit (symlinks) without systemd running.
cp "$deb" "$root/root/imdsguard.deb"
run_in dpkg -i /root/imdsguard.deb >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; echo "boot-test: dpkg -i failed"; exit 1; }
[ -L "$root/etc/systemd/system/multi-user.target.wants/imdsguard.service" ] ||
	{ echo "boot-test: postinst did not enable imdsguard.service"; exit 1; }

failures=0
checks=0
pass() { checks=$((checks + 1)); echo "  ok   $*"; }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); echo "  FAIL $*"; }
# expect SCENARIO KEY VALUE: the driver's result file has KEY=VALUE.
expect() {
	local got
	got=$(sed -n "s/^$2=//p" "$root/var/lib/imdsguard-test/$1.txt" 2>/dev/null | tail -1)
	if [ "$got" = "$3" ]; then pass "$1: $2=$3"; else fail "$1: $2=${got:-<missing>}, want $3"; fi
}

# boot SCENARIO: one full boot; the driver powers the container off.
boot() {
	local scenario=$1 start rc
	echo "$scenario" >"$root/etc/imdsguard-test/scenario"
	rm -f "$root/var/lib/imdsguard-test/$scenario.txt" "$root/var/lib/imdsguard-test/docker-starts"
	start=$(date +%s.%N)
	nspawn -b >"$work/console-$scenario.log" 2>&1 </dev/null &
	nspawn_pid=$!
	# Bounded: a boot that hangs is a failure, not a stuck test.
	rc=0
	for _ in $(seq 1 "${BOOT_TIMEOUT:-240}"); do
		kill -0 "$nspawn_pid" 2>/dev/null || break
		sleep 1
	done
	if kill -0 "$nspawn_pid" 2>/dev/null; then
		kill "$nspawn_pid"
		sleep 3
		kill -9 "$nspawn_pid" 2>/dev/null || true
		rc=124
	fi
	if [ "$rc" = 0 ]; then wait "$nspawn_pid" || rc=$?; else wait "$nspawn_pid" || true; fi
	nspawn_pid=
	printf '%s boot: %.1fs\n' "$scenario" "$(echo "$(date +%s.%N) - $start" | bc)"
	if [ ! -s "$root/var/lib/imdsguard-test/$scenario.txt" ]; then
		tail -40 "$work/console-$scenario.log"
		fail "$scenario: no result (nspawn exit $rc)"
		return 1
	fi
	[ "${VERBOSE:-}" = "" ] || cat "$root/var/lib/imdsguard-test/$scenario.txt"
}

# 0. Feasibility.
if ! boot probe; then
	if grep -qiE 'cgroup|Failed to|not supported' "$work/console-probe.log"; then
		skip "systemd-nspawn cannot boot a container here: $(grep -iE 'cgroup|Failed to|not supported' "$work/console-probe.log" | head -1)"
	fi
	echo "boot-test: FAILED: probe boot produced no result"
	exit 1
fi

# 1. The jump is in place before docker.service starts, every boot.
echo "boot-test: $boots boots, default install"
ordered=0
for i in $(seq 1 "$boots"); do
	boot order >/dev/null || continue
	d=$root/var/lib/imdsguard-test/docker-starts
	if [ "$(wc -l <"$d")" = 1 ] && grep -q 'jump4=rule1 jump6=rule1' "$d"; then
		ordered=$((ordered + 1))
	else
		echo "  boot $i: $(cat "$d")"
	fi
done
if [ "$ordered" = "$boots" ]; then pass "jump first in $ordered of $boots boots"; else fail "jump first in only $ordered of $boots boots"; fi

# 2. READY, watchdog, stop leaves the rules.
echo "boot-test: lifecycle (about 90 s: waits out the 30 s watchdog)"
if boot lifecycle; then
	expect lifecycle imdsguard.type notify
	expect lifecycle imdsguard.watchdog_usec 30s
	expect lifecycle ready_before_docker yes
	expect lifecycle status_text "IMDS block in place"
	expect lifecycle healthy_after_40s.nrestarts 0
	expect lifecycle watchdog_restart yes
	expect lifecycle watchdog_journal yes
	expect lifecycle after_stop.state inactive
	expect lifecycle after_stop.jump4 rule1
	expect lifecycle after_stop.jump6 rule1
	expect lifecycle after_stop.imds_rule4 yes
	expect lifecycle sandbox.cap_bnd_ok yes
fi

# 3. A failing imdsguard: Docker still starts by default (fail open)...
echo 'IMDSGUARD_ACTION=not-an-action' >>"$root/etc/imdsguard/imdsguard.env"
if boot fail-open; then
	expect fail-open docker.state active
	expect fail-open imdsguard.ready no
fi
# ...and with the strict drop-in, Docker does not start (fail closed).
install -D -m 0644 "$repo/systemd/docker.service.d/10-imdsguard-strict.conf" \
	"$root/etc/systemd/system/docker.service.d/10-imdsguard-strict.conf"
if boot strict-fail; then
	expect strict-fail docker.state inactive
	expect strict-fail docker.started no
	expect strict-fail imdsguard.ready no
fi
sed -i '/^IMDSGUARD_ACTION=not-an-action$/d' "$root/etc/imdsguard/imdsguard.env"
if boot strict-ok; then
	expect strict-ok docker.state active
	expect strict-ok docker.jump rule1
fi
rm -f "$root/etc/systemd/system/docker.service.d/10-imdsguard-strict.conf"

# 4. Package scripts with systemd running: uninstall removes the rules,
# install starts the service, reinstall (upgrade path) keeps them.
if boot pkg; then
	expect pkg remove.state inactive
	expect pkg remove.jump4 absent
	expect pkg remove.chain4 absent
	expect pkg install.state active
	expect pkg install.jump4 rule1
	expect pkg upgrade.state active
	expect pkg upgrade.jump4 rule1
	expect pkg upgrade.restarted yes
fi

# 5. User data boothook: imdsguard installed but not enabled (as if only
# unpacked in the AMI); the boothook alone must enforce before dockerd.
if [ -n "$parts" ]; then
	boothook=$(find "$parts" -name '*cloud-boothook' | sort | head -1)
	ecs=$(find "$parts" -name '*x-shellscript' | sort | tail -1)
	install -m 0755 "$boothook" "$root/usr/local/sbin/boothook"
	install -m 0755 "$ecs" "$root/usr/local/sbin/ecs-userdata"
	# Stand-ins for cloud-init's stages: boothooks run in cloud-init.service
	# (before network-online.target, so before dockerd); user scripts in
	# cloud-final.service (before ecs.service).
	cat >"$root/etc/systemd/system/cloud-init-standin.service" <<'UNIT'
[Unit]
Description=stand-in for cloud-init's init stage (runs the boothook)
After=local-fs.target
Before=network-online.target
Wants=network-online.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/boothook
RemainAfterExit=yes
[Install]
WantedBy=multi-user.target
UNIT
	cat >"$root/etc/systemd/system/cloud-final-standin.service" <<'UNIT'
[Unit]
Description=stand-in for cloud-init's final stage (runs user scripts)
After=network-online.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ecs-userdata
RemainAfterExit=yes
[Install]
WantedBy=multi-user.target
UNIT
	run_in systemctl disable imdsguard.service >/dev/null 2>&1
	run_in systemctl enable cloud-init-standin.service cloud-final-standin.service >/dev/null 2>&1
	mkdir -p "$root/etc/ecs"
	printf 'ECS_CLUSTER=default\nECS_LOGLEVEL=info\n' >"$root/etc/ecs/ecs.config"
	for n in 1 2; do
		if boot "boothook-$n"; then
			expect "boothook-$n" docker.jump rule1
			expect "boothook-$n" imdsguard.enabled enabled
			expect "boothook-$n" imdsguard.state active
			expect "boothook-$n" ecs.block_imds_lines 1
			expect "boothook-$n" ecs.cluster_lines 1
			expect "boothook-$n" ecs.cluster test-cluster
		fi
	done
else
	echo "boot-test: no user data parts given; boothook scenario not run"
fi

echo "boot-test: $((checks - failures)) passed, $failures failed"
[ "$failures" = 0 ]
