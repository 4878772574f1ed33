package userdata

import (
	"fmt"
	"strings"
)

// boothookTemplate is run by cloud-init on every boot, in its init stage,
// which is ordered before network-online.target and so before dockerd.
// Everything in it must be safe to repeat.
const boothookTemplate = `#!/bin/bash
# imdsguard boothook: install imdsguard if missing and put the IMDS block in
# place before dockerd can start a container. Runs on every boot.
set -uo pipefail
package_url=%s

log() { echo "imdsguard-boothook: $*" >&2; }

install_imdsguard() {
	local tmp name pkg rc
	tmp=$(mktemp -d)
	name=${package_url%%%%\?*}
	name=${name##*/}
	pkg="$tmp/$name"
	case "$package_url" in
	s3://*) aws s3 cp --only-show-errors "$package_url" "$pkg" ;;
	*) curl -fsSL --retry 5 --retry-connrefused -o "$pkg" "$package_url" ;;
	esac || {
		log "could not download $package_url"
		rm -rf "$tmp"
		return 1
	}
	case "$name" in
	*.rpm)
		# yum/dnf resolve dependencies (iptables); plain rpm is the fallback.
		if command -v dnf >/dev/null 2>&1; then
			dnf install -y "$pkg"
		elif command -v yum >/dev/null 2>&1; then
			yum install -y "$pkg"
		else
			rpm -U --replacepkgs "$pkg"
		fi
		;;
	*.deb) apt-get install -y "$pkg" ;;
	esac
	rc=$?
	rm -rf "$tmp"
	return "$rc"
}

if ! command -v imdsguard >/dev/null 2>&1; then
	if [ -z "$package_url" ]; then
		log "imdsguard is not installed and no package URL was given"
		exit 1
	fi
	install_imdsguard || {
		log "installing imdsguard failed"
		exit 1
	}
fi

rc=0
# One-shot enforcement now; the service keeps the block in place afterwards.
imdsguard apply || {
	log "imdsguard apply failed: containers may reach IMDS"
	rc=1
}
systemctl enable imdsguard.service || rc=1
# --no-block: the boot transaction is running; the unit's Before=docker.service
# still holds dockerd back until the service reports ready.
systemctl start --no-block imdsguard.service || rc=1
exit "$rc"
`

// Boothook returns the text/cloud-boothook script. packageURL may be empty
// when the AMI already contains imdsguard.
func Boothook(packageURL string) string {
	return fmt.Sprintf(boothookTemplate, shellQuote(packageURL))
}

const ecsScriptHead = `#!/bin/bash
# imdsguard: ECS agent settings. Each key's existing lines are replaced, not
# appended to, so the file keeps one line per key however often this runs.
set -euo pipefail
ecs_config=/etc/ecs/ecs.config

set_ecs_option() {
	local key=$1 value=$2 tmp
	mkdir -p "${ecs_config%/*}"
	[ -e "$ecs_config" ] || touch "$ecs_config"
	tmp=$(mktemp "$ecs_config.XXXXXX")
	# grep exits 1 when it keeps no line; only 2 (an error) is fatal.
	grep -v "^[[:space:]]*$key=" "$ecs_config" >"$tmp" || [ $? -eq 1 ]
	printf '%s=%s\n' "$key" "$value" >>"$tmp"
	chmod --reference="$ecs_config" "$tmp"
	chown --reference="$ecs_config" "$tmp"
	mv -f "$tmp" "$ecs_config"
}

`

// ECSScript returns the text/x-shellscript that writes ECS settings, or ""
// when there is nothing to set.
func ECSScript(cluster string, enforceAWSVPC bool) string {
	var b strings.Builder
	if cluster != "" {
		fmt.Fprintf(&b, "set_ecs_option ECS_CLUSTER %s\n", shellQuote(cluster))
	}
	if enforceAWSVPC {
		b.WriteString("set_ecs_option ECS_AWSVPC_BLOCK_IMDS true\n")
	}
	if b.Len() == 0 {
		return ""
	}
	return ecsScriptHead + b.String()
}
