#!/usr/bin/env bash
# make deb-test: build the Debian package (scripts/deb.sh), check its
# control data and contents, install it into a scratch root with dpkg
# (--root, maintainer scripts run chroot-free: they honour $DPKG_ROOT),
# run the installed migrate, check the generated secret, the manual page
# (groff, if installed) and the unit (systemd-analyze verify, if
# installed), reinstall (the secret stays), remove and purge.
# Needs root (dpkg --root installs files owned by root) and dpkg.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "deb-test: FAIL: $*" >&2; exit 1; }
skip() { echo "deb-test: skipped: $*"; }
[[ $(id -u) == 0 ]] || fail "needs root (dpkg --root installs files owned by root)"
for t in dpkg dpkg-deb; do command -v $t >/dev/null || fail "$t is missing (apt-get install dpkg)"; done

start=$SECONDS
deb=$(scripts/deb.sh)
[[ -f "$deb" ]] || fail "scripts/deb.sh made no $deb"
[[ "$deb" =~ ^dist/migrate_([^_]+)_amd64\.deb$ ]] || fail "package name $deb is not dist/migrate_VERSION_amd64.deb"
version=${BASH_REMATCH[1]}
echo "deb-test: built $deb in $((SECONDS - start)) s"

# Control data.
info=$(dpkg-deb --info "$deb")
for want in "Package: migrate" "Version: $version" "Architecture: amd64" "Maintainer: " "Description: "; do
	grep -q "^ $want" <<<"$info" || fail "dpkg-deb --info lacks \"$want\":"$'\n'"$info"
done
for s in postinst prerm postrm; do
	grep -Eq "^ +[0-9]+ bytes, +[0-9]+ lines +\* +$s " <<<"$info" || fail "no executable maintainer script $s:"$'\n'"$info"
done

# Contents: path, mode, owner.
contents=$(dpkg-deb --contents "$deb")
check() { # mode path
	awk -v m="$1" -v p="$2" '$1 == m && $2 == "root/root" && $NF == p { found = 1 } END { exit !found }' <<<"$contents" ||
		fail "the package lacks $2 with mode $1, owned by root:"$'\n'"$contents"
}
check -rwxr-xr-x ./usr/bin/migrate
check -rw-r--r-- ./usr/lib/systemd/system/migrate-serve.service
check -rw-r--r-- ./usr/share/man/man1/migrate.1.gz
check -rw-r--r-- ./usr/share/doc/migrate/copyright
check drwx------ ./etc/migrate/

# Install into a scratch root.
root=$(mktemp -d /tmp/deb-test-root.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/log"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
dpkgr() { dpkg --root="$root" --force-script-chrootless --log=/dev/null "$@"; }
dpkgr -i "$deb" >/dev/null 2>"$root.log" || { cat "$root.log" >&2; fail "dpkg -i into $root"; }
grep -q "generated a shared secret" "$root.log" || fail "the postinst did not say it generated a secret:"$'\n'"$(cat "$root.log")"
rm -f "$root.log"
dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Status} ${Version}\n' migrate | grep -qx "install ok installed $version" ||
	fail "dpkg does not list migrate $version as installed in $root"

out=$("$root/usr/bin/migrate" version)
[[ "$out" == "migrate "* ]] || fail "installed migrate version said: $out"
echo "deb-test: installed; $out"

secret="$root/etc/migrate/secret"
[[ -f "$secret" ]] || fail "no secret generated in /etc/migrate/secret"
[[ $(stat -c '%a %U' "$secret") == "600 root" ]] || fail "secret mode/owner $(stat -c '%a %U' "$secret"), want 600 root"
[[ $(stat -c '%a' "$root/etc/migrate") == 700 ]] || fail "/etc/migrate mode $(stat -c '%a' "$root/etc/migrate"), want 700"
grep -Eqx '[0-9a-f]{64}' "$secret" || fail "the secret is not 64 hex digits"
before=$(cat "$secret")

# The manual page.
zcat "$root/usr/share/man/man1/migrate.1.gz" >"$root/migrate.1"
for want in '^\.TH MIGRATE 1' '^\.SS "migrate serve' '\\-\\-metrics' '^\.SH EXIT STATUS'; do
	grep -q "$want" "$root/migrate.1" || fail "the manual page lacks $want"
done
if command -v groff >/dev/null; then
	warn=$(groff -man -ww -z "$root/migrate.1" 2>&1) || true
	[[ -z "$warn" ]] || fail "groff warns about the manual page:"$'\n'"$warn"
else
	skip "groff is not installed: the manual page is not checked for roff warnings"
fi

# The unit.
unit="$root/usr/lib/systemd/system/migrate-serve.service"
grep -qx 'ExecStart=/usr/bin/migrate serve --listen :7070 --secret-file /etc/migrate/secret -v' "$unit" ||
	fail "the unit's ExecStart is not the packaged binary with the packaged secret:"$'\n'"$(grep ExecStart "$unit")"
if command -v systemd-analyze >/dev/null; then
	# Verified against this host's units, with the binary of the scratch
	# root in place of /usr/bin/migrate (it must exist and be executable).
	mkdir "$root/verify"
	sed "s|/usr/bin/migrate|$root/usr/bin/migrate|" "$unit" >"$root/verify/migrate-serve.service"
	msg=$(systemd-analyze verify --man=no "$root/verify/migrate-serve.service" 2>&1) || fail "systemd-analyze verify:"$'\n'"$msg"
	[[ -z "$msg" ]] || fail "systemd-analyze verify warns:"$'\n'"$msg"
else
	skip "systemd-analyze is not installed: the unit is not verified"
fi

# Reinstall: the secret stays what it was.
dpkgr -i "$deb" >/dev/null 2>&1 || fail "reinstalling"
[[ $(cat "$secret") == "$before" ]] || fail "reinstalling replaced the secret"

# Remove keeps the secret (the operator's, shared with other hosts);
# purge removes it.
dpkgr -r migrate >/dev/null 2>&1 || fail "dpkg -r"
[[ ! -e "$root/usr/bin/migrate" ]] || fail "dpkg -r left /usr/bin/migrate"
[[ -f "$secret" ]] || fail "dpkg -r removed the secret"
dpkgr -P migrate >/dev/null 2>&1 || fail "dpkg -P"
[[ ! -e "$root/etc/migrate" ]] || fail "dpkg -P left /etc/migrate: $(ls -la "$root/etc/migrate")"

echo "deb-test: ok ($deb, $((SECONDS - start)) s)"
