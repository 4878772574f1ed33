#!/bin/bash
# Packer cannot build here (no AWS). Stand-ins: the template passes
# 'packer validate -syntax-only' (Debian's packer, when installed), its last
# provisioner is 'imdsguard check', and the provisioner script does the
# right things against a fake root with stub rpm/systemctl on PATH.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
dir=$repo/packaging/packer
failures=0
checks=0
pass() { checks=$((checks + 1)); echo "  ok   $*"; }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); echo "  FAIL $*"; }

if command -v packer >/dev/null; then
	if out=$(packer validate -syntax-only "$dir/imdsguard-al2023.pkr.hcl" 2>&1); then
		pass "packer $(packer version | head -1 | awk '{print $2}') validate -syntax-only"
	else
		fail "packer validate: $out"
	fi
else
	echo "  SKIP packer validate: packer not installed"
fi

# The check must be the last provisioner, or a later step could undo it.
last=$(awk '/^  provisioner "/ {blk=""} /^  provisioner "/,/^  }/ {blk=blk $0 "\n"} END {printf "%s", blk}' "$dir/imdsguard-al2023.pkr.hcl")
if grep -q 'imdsguard check' <<<"$last"; then pass "last provisioner runs imdsguard check"; else fail "last provisioner is not 'imdsguard check': $last"; fi

# Provisioner script against a fake root.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/root/etc/ecs" "$tmp/root/var/lib/ecs/data"
printf 'ECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=false\n' >"$tmp/root/etc/ecs/ecs.config"
chmod 0640 "$tmp/root/etc/ecs/ecs.config"
echo state >"$tmp/root/var/lib/ecs/data/agent.db"
for stub in rpm systemctl imdsguard dnf yum; do
	cat >"$tmp/bin/$stub" <<STUB
#!/bin/sh
echo "$stub \$*" >>"$tmp/calls"
[ -z "\${FAIL_STUB:-}" ] || [ "\$FAIL_STUB" != "$stub" ] || exit 1
STUB
	chmod +x "$tmp/bin/$stub"
done
run() { PATH="$tmp/bin:/usr/bin:/bin" IMDSGUARD_ROOT="$tmp/root" bash "$dir/provision-imdsguard.sh" /tmp/imdsguard.rpm; }
for n in 1 2; do
	: >"$tmp/calls"
	if run >"$tmp/out" 2>&1; then pass "provisioner run $n exits 0"; else fail "provisioner run $n: $(cat "$tmp/out")"; fi
done
want="rpm -U --replacepkgs /tmp/imdsguard.rpm
systemctl enable imdsguard.service
systemctl start docker.service
systemctl restart imdsguard.service
systemctl stop ecs.service"
if [ "$(cat "$tmp/calls")" = "$want" ]; then pass "provisioner calls: rpm, enable, docker, imdsguard, ecs stop"; else fail "provisioner calls:
$(cat "$tmp/calls")
want:
$want"; fi
if [ "$(cat "$tmp/root/etc/ecs/ecs.config")" = "$(printf 'ECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=true')" ]; then
	pass "ecs.config: one ECS_AWSVPC_BLOCK_IMDS=true after two runs"
else
	fail "ecs.config: $(cat "$tmp/root/etc/ecs/ecs.config")"
fi
mode=$(stat -c %a "$tmp/root/etc/ecs/ecs.config")
if [ "$mode" = 640 ]; then pass "ecs.config mode kept"; else fail "ecs.config mode $mode"; fi
if [ -z "$(ls -A "$tmp/root/var/lib/ecs/data")" ]; then pass "ECS agent state cleared"; else fail "ECS agent state left behind"; fi
if FAIL_STUB=rpm run >/dev/null 2>&1; then fail "provisioner succeeded although rpm failed"; else pass "provisioner fails when rpm fails"; fi

echo "packer: $((checks - failures)) passed, $failures failed"
[ "$failures" = 0 ]
