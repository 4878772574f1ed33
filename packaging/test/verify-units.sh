#!/bin/bash
# systemd-analyze verify for the unit and the strict Docker drop-in, against
# temp copies whose ExecStart points at a binary that exists here (verify
# rejects a missing ExecStart). Any output counts as a failure: verify
# reports most problems as warnings with exit status 0.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=${IMDSGUARD_BIN:-$repo/bin/imdsguard}
[ -x "$bin" ] || { echo "verify-units: $bin missing; run 'make build'" >&2; exit 1; }
command -v systemd-analyze >/dev/null || { echo "verify-units: systemd-analyze missing (apt-get install systemd)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|/usr/bin/imdsguard|$bin|g" "$repo/systemd/imdsguard.service" >"$tmp/imdsguard.service"
# A stand-in docker.service for the drop-in to attach to.
cat >"$tmp/docker.service" <<UNIT
[Unit]
Description=stand-in for docker.service
[Service]
ExecStart=/bin/true
UNIT
mkdir "$tmp/docker.service.d"
cp "$repo/systemd/docker.service.d/10-imdsguard-strict.conf" "$tmp/docker.service.d/"

fail=0
for u in imdsguard.service docker.service; do
	out=$(cd "$tmp" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no "$tmp/$u" 2>&1) || fail=1
	if [ -n "$out" ]; then
		echo "$out"
		fail=1
	fi
done
# Sandbox score: informative only.
score=$( (cd "$tmp"; systemd-analyze security --offline=yes --man=no "$tmp/imdsguard.service" 2>/dev/null | tail -1) || true)
[ -z "$score" ] || echo "verify-units: $score"
if [ "$fail" = 0 ]; then
	echo "verify-units: ok (imdsguard.service, docker.service + 10-imdsguard-strict.conf)"
else
	echo "verify-units: FAILED" >&2
	exit 1
fi
