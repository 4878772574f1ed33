#!/bin/bash
# make test-packaging: every packaging check, after 'make package'.
# Installs missing tools with apt-get (packer only if the archive has it).
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo" || exit 1
here=$repo/packaging/test

need=(systemd systemd-container debootstrap rpm cloud-init python3 shellcheck file bc iptables)
missing=()
for p in "${need[@]}" packer; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "test-packaging: installing ${missing[*]}"
	apt-get update -qq >/dev/null
	req=()
	for p in "${missing[@]}"; do [ "$p" = packer ] || req+=("$p"); done
	if [ ${#req[@]} -gt 0 ]; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${req[@]}" >/dev/null ||
			{ echo "test-packaging: apt-get install failed"; exit 1; }
	fi
	if [[ " ${missing[*]} " == *" packer "* ]]; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends packer >/dev/null 2>&1 ||
			echo "test-packaging: packer not installable from apt; template syntax check skipped"
	fi
fi

# 'make package' leaves exactly one of each.
debs=(dist/imdsguard_*.deb)
rpms=(dist/imdsguard-*.rpm)
deb=${debs[0]}
rpm=${rpms[0]}
if [ ! -f "$deb" ] || [ ! -f "$rpm" ]; then
	echo "test-packaging: run 'make package' first"
	exit 1
fi

passed=0 failed=0 skipped=0
results=()
step() { # step NAME CMD...
	local name=$1 rc start
	shift
	echo "=== $name"
	start=$SECONDS
	"$@"
	rc=$?
	case $rc in
	0) passed=$((passed + 1)); results+=("PASS $name ($((SECONDS - start))s)") ;;
	77) skipped=$((skipped + 1)); results+=("SKIP $name") ;;
	*) failed=$((failed + 1)); results+=("FAIL $name (exit $rc)") ;;
	esac
}
parts=$(mktemp -d)
trap 'rm -rf "$parts"' EXIT

step "go test ./packaging/... ./cmd/imdsguard (userdata, sd_notify)" \
	go test -count=1 -run 'TestGenerate|TestScriptsParse|TestECSScript|TestCmdUserdata|TestSystemdHooks' ./packaging/... ./cmd/imdsguard/
step "shellcheck" shellcheck -x packaging/scripts/*.sh packaging/packer/*.sh packaging/test/*.sh
step "systemd-analyze verify" bash "$here/verify-units.sh"
step "package contents" bash "$here/contents.sh" "$deb" "$rpm"
step "user data via cloud-init's parser" bash "$here/userdata.sh" bin/imdsguard "$parts"
step "packer template and provisioner" bash "$here/packer.sh"
step "boot test (systemd-nspawn)" bash "$here/boot.sh" "$deb" "$parts"

echo
printf '%s\n' "${results[@]}"
echo "test-packaging: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
