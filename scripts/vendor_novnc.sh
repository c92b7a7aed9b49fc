#!/usr/bin/env bash
# Vendor noVNC (the browser viewer's VNC client) from the npm registry into
# static/vendor/novnc. The result is not committed: `isardctl` runs this before
# collectstatic, and it does nothing when the pinned version is already there.
#
#   scripts/vendor_novnc.sh          install or check the pinned version
#   scripts/vendor_novnc.sh --force  install again
set -euo pipefail

VERSION=1.7.0
# The tarball's integrity as published on the registry (npm view @novnc/novnc@1.7.0 dist.integrity).
INTEGRITY=sha512-ucEJOx4T2avIRCleodk7YobZj5O2Ga2AeLfQ69A/yjG9HHba2+PDgwSkN3FttrmG+70ZGx21sElNFouK13RzyA==

cd "$(dirname "$(readlink -f "$0")")/.."
DEST=static/vendor/novnc
STAMP="$VERSION $INTEGRITY"

die() { printf 'vendor_novnc: %s\n' "$*" >&2; exit 1; }

if [ "${1:-}" != "--force" ] && [ "$(cat "$DEST/.vendored" 2>/dev/null)" = "$STAMP" ] \
   && [ -f "$DEST/core/rfb.js" ]; then
  exit 0
fi
command -v npm >/dev/null || die "npm is needed to fetch @novnc/novnc (install Node.js and npm)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent --loglevel=error "@novnc/novnc@$VERSION" >/dev/null 2>"$work/npm.log") \
  || die "npm pack @novnc/novnc@$VERSION failed: $(cat "$work/npm.log")"
tarball="$work/novnc-novnc-$VERSION.tgz"
[ -f "$tarball" ] || die "npm pack did not produce $tarball"
actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
[ "$actual" = "$INTEGRITY" ] || die "integrity mismatch for @novnc/novnc@$VERSION: $actual"

mkdir "$work/unpacked"
tar -xzf "$tarball" -C "$work/unpacked"
rm -rf "$DEST.new"
mkdir -p "$DEST.new"
cp -r "$work/unpacked/package/core" "$work/unpacked/package/vendor" "$DEST.new/"
cp "$work/unpacked/package/LICENSE.txt" "$work/unpacked/package/AUTHORS" "$DEST.new/"
echo "$STAMP" > "$DEST.new/.vendored"
rm -rf "$DEST"
mv "$DEST.new" "$DEST"
echo "vendored noVNC $VERSION into $DEST"
