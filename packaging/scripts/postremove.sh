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
exit 0
