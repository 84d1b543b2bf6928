#!/usr/bin/env bash
# Vendor three.js for the explorer (morphzoo view) from the npm registry, so the page needs no CDN at run time.
#   bash scripts/vendor_three.sh [VERSION]     # default: the version in SOURCE
# Writes morphzoo/explorer/static/vendor/three/ and its SOURCE (version + sha256 of each file, checked by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
target=morphzoo/explorer/static/vendor/three
version=${1:-$(sed -n 's/^three@\([0-9.]*\) .*/\1/p' "$target/SOURCE")}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "three@$version" >/dev/null && tar xzf "three-$version.tgz")
files=(build/three.module.min.js build/three.core.min.js examples/jsm/controls/OrbitControls.js LICENSE)
for file in "${files[@]}"; do cp "$work/package/$file" "$target/"; done
{
    echo "three@$version from the npm registry (MIT, see LICENSE), written by scripts/vendor_three.sh:"
    echo "build/three.module.min.js, build/three.core.min.js, examples/jsm/controls/OrbitControls.js, LICENSE."
    echo "sha256:"
    (cd "$target" && sha256sum "${files[@]##*/}")
} > "$target/SOURCE"
echo "vendored three@$version into $target"
