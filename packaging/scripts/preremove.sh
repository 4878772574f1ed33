#!/bin/sh
# imdsguard pre-removal, shared by the .deb (prerm) and .rpm (%preun).
# Only a real uninstall removes the rules: deb passes "remove" (and
# "upgrade"/"failed-upgrade"/"deconfigure" otherwise); rpm passes $1 = number
# of instances left (0 on uninstall, 1 on upgrade).
set -e

case "${1:-}" in
remove | 0) ;;
*) exit 0 ;;
esac

if [ -d /run/systemd/system ] &&
	systemctl show -p RequiredBy --value imdsguard.service 2>/dev/null | grep -qw docker.service; then
	# Stopping imdsguard now would stop Docker and every container with it.
	echo "imdsguard: docker.service requires imdsguard.service (strict mode drop-in)." >&2
	echo "imdsguard: remove /etc/systemd/system/docker.service.d/10-imdsguard-strict.conf, run 'systemctl daemon-reload', then uninstall." >&2
	exit 1
fi

if [ -d /run/systemd/system ]; then
	systemctl stop imdsguard.service || true
fi
# rpm forgets everything on erase; dpkg keeps configuration until purge
# (postremove), so a reinstalled .deb comes back enabled, as Debian does.
if [ "$1" = 0 ] && command -v systemctl >/dev/null 2>&1; then
	systemctl disable imdsguard.service || true
fi

# Stopping the service leaves the rules (fail closed); uninstalling deletes
# them, with the same settings the service used when they are readable.
if ! (
	if [ -r /etc/imdsguard/imdsguard.env ]; then
		set -a
		# shellcheck source=/dev/null
		. /etc/imdsguard/imdsguard.env
		set +a
	fi
	exec /usr/bin/imdsguard remove
); then
	echo "imdsguard: 'imdsguard remove' failed; the IMDS-GUARD rules may still be in place" >&2
fi
exit 0
