#!/bin/bash
# Generates user data with the built binary, parses it back with
# cloud-init's own user-data processor (python3 email parser if cloud-init
# is missing), and checks part types and order, and that the scripts pass
# bash -n and shellcheck. Leaves the parts in OUTDIR for the boot test.
# usage: userdata.sh BINARY OUTDIR
set -euo pipefail
bin=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3
[ -x "$py" ] || py=python3
failures=0
checks=0
pass() { checks=$((checks + 1)); echo "  ok   $*"; }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); echo "  FAIL $*"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Existing user data to merge: AWS's bridge-mode style MIME with a
# cloud-config and a script that appends ECS_CLUSTER.
cat >"$tmp/existing.txt" <<'UD'
Content-Type: multipart/mixed; boundary="==BOUNDARY=="
MIME-Version: 1.0

--==BOUNDARY==
Content-Type: text/cloud-config; charset="us-ascii"

#cloud-config
write_files:
  - path: /etc/motd
    content: hello
--==BOUNDARY==
Content-Type: text/x-shellscript; charset="us-ascii"

#!/bin/bash
echo "ECS_CLUSTER=my-ecs-cluster" >> /etc/ecs/ecs.config
--==BOUNDARY==--
UD
printf '#!/bin/bash\necho plain\n' >"$tmp/plain.sh"

# name | args | expected part types in order
cases=(
	"basic|--cluster test-cluster --enforce-awsvpc|text/cloud-boothook text/x-shellscript"
	"merge-mime|--cluster test-cluster --enforce-awsvpc --merge $tmp/existing.txt|text/cloud-boothook text/cloud-config text/x-shellscript text/x-shellscript"
	"merge-plain|--enforce-awsvpc --merge $tmp/plain.sh|text/cloud-boothook text/x-shellscript text/x-shellscript"
	"baked-only||text/cloud-boothook"
)
for c in "${cases[@]}"; do
	IFS='|' read -r name args want <<<"$c"
	# shellcheck disable=SC2086 # args are space-separated flags
	if ! "$bin" userdata $args >"$tmp/$name.ud" 2>"$tmp/$name.err"; then
		fail "$name: imdsguard userdata failed: $(cat "$tmp/$name.err")"
		continue
	fi
	got=$("$py" "$here/parse_userdata.py" "$tmp/$name.ud" "$tmp/$name.parts" 2>"$tmp/$name.parser" | awk '{print $2}' | xargs)
	parser=$(sed -n 's/^parser //p' "$tmp/$name.parser")
	if [ "$got" = "$want" ]; then pass "$name: parts [$got] ($parser)"; else fail "$name: parts [$got], want [$want] ($parser)"; fi
	for f in "$tmp/$name.parts"/*; do
		case "$f" in *cloud-boothook | *x-shellscript) ;; *) continue ;; esac
		if bash -n "$f" 2>"$tmp/err"; then pass "$name: bash -n ${f##*/}"; else fail "$name: bash -n ${f##*/}: $(cat "$tmp/err")"; fi
		if command -v shellcheck >/dev/null; then
			# Only our parts need be clean; the merged user script is the user's.
			if grep -q imdsguard "$f"; then
				if shellcheck -s bash "$f" >"$tmp/err" 2>&1; then pass "$name: shellcheck ${f##*/}"; else fail "$name: shellcheck ${f##*/}: $(cat "$tmp/err")"; fi
			fi
		fi
	done
done
if [ "$(grep -c 'my-ecs-cluster' "$tmp/merge-mime.parts/02-text_x-shellscript")" = 1 ]; then
	pass "merge-mime: user's script kept as is"
else
	fail "merge-mime: user's script changed"
fi
if "$bin" userdata --bogus >/dev/null 2>"$tmp/err"; then fail "bad flag accepted"; else
	rc=$?
	if [ "$rc" = 2 ] && [ "$(wc -l <"$tmp/err")" = 1 ]; then pass "bad flag: one line, exit 2"; else fail "bad flag: exit $rc, $(cat "$tmp/err")"; fi
fi

mkdir -p "$out"
cp "$tmp/merge-mime.parts"/* "$out/"
echo "userdata: $((checks - failures)) passed, $failures failed"
[ "$failures" = 0 ]
