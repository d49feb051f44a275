#!/usr/bin/env bash
# Build the Debian package dist/migrate_VERSION_amd64.deb (make deb) with
# nfpm, run through `go run` at a fixed version: the static binary, the
# manual page migrate(1) (migrate help --man), the migrate-serve unit made
# from contrib/migrate-serve.service for /usr/bin, the copyright file and
# the maintainer scripts of packaging/. Prints the package's path.
#
# DEB_VERSION overrides the package version (default: from git describe:
# the tag without its "v", or 0~gitDATE.HASH without a tag).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin

GO=${GO:-go}
NFPM_VERSION=${NFPM_VERSION:-v2.48.0}

# The binary's version, as make build sets it.
desc=$(git describe --always --dirty 2>/dev/null || echo dev)
if [[ -z "${DEB_VERSION:-}" ]]; then
	if tag=$(git describe --tags --dirty 2>/dev/null) && [[ "$tag" =~ ^v?[0-9] ]]; then
		# v1.2.3-4-gabc-dirty -> 1.2.3+4.gabc.dirty
		DEB_VERSION=$(sed -e 's/^v//' -e 's/-/+/' -e 's/-/./g' <<<"$tag")
	else
		DEB_VERSION="0~git$(git log -1 --format=%cd --date=format:%Y%m%d 2>/dev/null || date +%Y%m%d).${desc//-/.}"
	fi
fi
export DEB_VERSION

STAGE=dist/stage # packaging/nfpm.yaml names its files there
rm -rf "$STAGE"
mkdir -p "$STAGE"
CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-X main.version=$desc" -o "$STAGE/migrate" ./cmd/migrate
"$STAGE/migrate" help --man | gzip -9n > "$STAGE/migrate.1.gz"
# The unit as packaged: the binary in /usr/bin, the secret the postinst
# generated, and no install steps that the package does.
# The "# Install:" paragraph (up to the next "#" line) is replaced.
sed -e 's|/usr/local/bin/migrate|/usr/bin/migrate|g' \
	-e '/^# Install:/,/^#$/c\
# Installed by the migrate package, which generated a secret in\
# /etc/migrate/secret (mode 0600, migrate serve --gen-secret) if there was\
# none: put the same one on every host, by a channel you trust, then\
# systemctl enable --now migrate-serve.\
#' \
	contrib/migrate-serve.service > "$STAGE/migrate-serve.service"
for want in '^ExecStart=/usr/bin/migrate ' '^\[Service\]$' '^\[Install\]$' '^# Installed by the migrate package'; do
	grep -q "$want" "$STAGE/migrate-serve.service" ||
		{ echo "deb: the unit made from contrib/migrate-serve.service lacks $want (has its Install comment changed?)" >&2; exit 1; }
done

out="dist/migrate_${DEB_VERSION}_amd64.deb"
rm -f "$out"
"$GO" run "github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION" package --config packaging/nfpm.yaml --packager deb --target "$out" >&2
echo "$out"
