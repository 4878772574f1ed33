#!/bin/sh
# imdsguard post-removal: forget the removed unit. deb: $1 = remove, purge,
# upgrade, ...; rpm: $1 = instances left.
set -e
case "${1:-}" in
remove | purge | 0)
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload || true
	fi
	;;
esac
# deb purge: drop the enablement kept since 'remove' (the unit file is gone,
# so 'systemctl disable' can no longer find its [Install] section).
if [ "${1:-}" = purge ]; then
	rm -f /etc/systemd/system/multi-user.target.wants/imdsguard.service
fi
exit 0
