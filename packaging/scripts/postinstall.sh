#!/bin/sh
# imdsguard post-install, shared by the .deb (postinst) and .rpm (%post).
# deb: $1 = configure, $2 = previously configured version (empty on a fresh
# install); rpm: $1 = number of installed instances (1 install, 2+ upgrade).
set -e

upgrade=no
case "${1:-}" in
configure) [ -z "${2:-}" ] || upgrade=yes ;;
1) ;;
[2-9] | [1-9][0-9]*) upgrade=yes ;;
abort-*) upgrade=yes ;; # deb rolled back a failed upgrade/removal
*) exit 0 ;;
esac

# Enabling is only symlinks, so it also works while baking an image with no
# systemd running. Only on a fresh install: an upgrade keeps the admin's choice.
if [ "$upgrade" = no ] && command -v systemctl >/dev/null 2>&1; then
	systemctl enable imdsguard.service
fi

# Start or restart only on a host where systemd is PID 1.
[ -d /run/systemd/system ] || exit 0
systemctl daemon-reload

if [ "$upgrade" = yes ] && systemctl is-active --quiet imdsguard.service; then
	# In strict mode docker.service Requires= imdsguard, so restarting
	# imdsguard would restart dockerd and every container. Leave that to the
	# admin.
	if systemctl show -p RequiredBy --value imdsguard.service 2>/dev/null | grep -qw docker.service; then
		echo "imdsguard: docker.service requires imdsguard (strict mode); not restarting it, which would restart Docker." >&2
		echo "imdsguard: the new version runs after the next 'systemctl restart imdsguard' or reboot." >&2
		exit 0
	fi
	systemctl restart imdsguard.service ||
		echo "imdsguard: restart failed; see 'journalctl -u imdsguard'" >&2
	exit 0
fi

# Fresh install, or a .deb reinstalled after 'remove' (dpkg then passes the
# old version, and the enablement was kept): start it unless disabled.
if systemctl is-enabled --quiet imdsguard.service; then
	# A failed start must not leave the package half-configured; the unit
	# restarts itself and the admin can look at the journal.
	systemctl start imdsguard.service ||
		echo "imdsguard: service did not start; see 'journalctl -u imdsguard'" >&2
fi
exit 0
