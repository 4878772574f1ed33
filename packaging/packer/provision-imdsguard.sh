#!/bin/bash
# Packer provisioner for the ECS-optimized Amazon Linux 2023 AMI: installs
# the imdsguard rpm, enables it, sets ECS_AWSVPC_BLOCK_IMDS=true and clears
# the ECS agent's state so instances from the image register afresh.
# 'imdsguard check' runs after this, as the template's last provisioner.
#
# usage: provision-imdsguard.sh RPM
# IMDSGUARD_ROOT (tests only) prefixes every file path touched here.
set -euo pipefail

[ $# = 1 ] || { echo "usage: $0 RPM" >&2; exit 2; }
pkg=$1
root=${IMDSGUARD_ROOT:-}
ecs_config=$root/etc/ecs/ecs.config

# The ECS AMI already has iptables (Docker needs it), so rpm needs no
# repository; --replacepkgs makes a re-run harmless.
rpm -U --replacepkgs "$pkg"
systemctl enable imdsguard.service

# One line per key, replaced rather than appended (same as the user data).
set_ecs_option() {
	local key=$1 value=$2 tmp
	mkdir -p "${ecs_config%/*}"
	[ -e "$ecs_config" ] || touch "$ecs_config"
	tmp=$(mktemp "$ecs_config.XXXXXX")
	grep -v "^[[:space:]]*$key=" "$ecs_config" >"$tmp" || [ $? -eq 1 ]
	printf '%s=%s\n' "$key" "$value" >>"$tmp"
	chmod --reference="$ecs_config" "$tmp"
	chown --reference="$ecs_config" "$tmp"
	mv -f "$tmp" "$ecs_config"
}
# awsvpc tasks never pass DOCKER-USER; the ECS agent blocks IMDS for them.
set_ecs_option ECS_AWSVPC_BLOCK_IMDS true

# Docker up so the check can list containers; imdsguard (re)started so it
# runs this rpm's binary and has enforced before the check.
systemctl start docker.service
systemctl restart imdsguard.service

# A custom ECS AMI must not carry the build instance's agent state
# (its container instance ARN) into every instance launched from it.
systemctl stop ecs.service || true
rm -rf "$root/var/lib/ecs/data/"*
