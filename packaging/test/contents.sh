#!/bin/bash
# Checks what the .deb and .rpm contain: files, modes, conffile, scripts,
# dependency, and a static binary.
# usage: contents.sh DEB RPM
set -euo pipefail
deb=$1
rpm=$2
failures=0
checks=0
pass() { checks=$((checks + 1)); echo "  ok   $*"; }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); echo "  FAIL $*"; }
has() { # has WHAT LISTING PATTERN
	if grep -qE "$3" <<<"$2"; then pass "$1"; else fail "$1 (no line matching $3)"; fi
}
hasnot() {
	if grep -qE "$3" <<<"$2"; then fail "$1 (unexpected $3)"; else pass "$1"; fi
}

dc=$(dpkg-deb -c "$deb")
has "deb: /usr/bin/imdsguard 0755" "$dc" '^-rwxr-xr-x root/root .* \./usr/bin/imdsguard$'
has "deb: unit" "$dc" '^-rw-r--r-- root/root .* \./usr/lib/systemd/system/imdsguard\.service$'
has "deb: env file" "$dc" '\./etc/imdsguard/imdsguard\.env$'
has "deb: strict drop-in as example" "$dc" '\./usr/share/doc/imdsguard/examples/10-imdsguard-strict\.conf$'
has "deb: INSTALL.md" "$dc" '\./usr/share/doc/imdsguard/INSTALL\.md$'
hasnot "deb: drop-in not active" "$dc" 'etc/systemd'
if [ -f README.md ]; then has "deb: README.md" "$dc" '/usr/share/doc/imdsguard/README\.md$'; fi
if [ -f LICENSE ]; then has "deb: LICENSE" "$dc" '/usr/share/doc/imdsguard/LICENSE$'; fi
has "deb: conffile" "$(dpkg-deb -f "$deb" Conffiles 2>/dev/null; dpkg-deb -I "$deb" conffiles 2>/dev/null)" '^/etc/imdsguard/imdsguard\.env'
has "deb: depends on iptables" "$(dpkg-deb -f "$deb" Depends)" 'iptables'
for s in postinst prerm postrm; do
	if dpkg-deb -I "$deb" "$s" >/dev/null 2>&1; then pass "deb: $s script"; else fail "deb: no $s script"; fi
done

rl=$(rpm -qlpv "$rpm" 2>/dev/null)
has "rpm: /usr/bin/imdsguard 0755" "$rl" '^-rwxr-xr-x .* /usr/bin/imdsguard$'
has "rpm: unit" "$rl" ' /usr/lib/systemd/system/imdsguard\.service$'
has "rpm: strict drop-in as example" "$rl" ' /usr/share/doc/imdsguard/examples/10-imdsguard-strict\.conf$'
hasnot "rpm: drop-in not active" "$rl" 'etc/systemd'
has "rpm: config(noreplace) env file" "$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm" 2>/dev/null)" '^cn +/etc/imdsguard/imdsguard\.env$'
has "rpm: requires iptables" "$(rpm -qpR "$rpm" 2>/dev/null)" '^iptables'
sc=$(rpm -qp --scripts "$rpm" 2>/dev/null)
for s in postinstall preuninstall postuninstall; do has "rpm: $s scriptlet" "$sc" "^$s scriptlet"; done

# The packaged binary must not depend on the build host's glibc.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp"
if file "$tmp/usr/bin/imdsguard" | grep -q 'statically linked'; then pass "binary is static"; else fail "binary is dynamic: $(file -b "$tmp/usr/bin/imdsguard")"; fi

echo "contents: $((checks - failures)) passed, $failures failed"
[ "$failures" = 0 ]
