#!/bin/sh
# The hello-site build: copies src/ into public/ and stamps the commit into the pages.
# POSIX sh, no network. Runs in the checkout with a clean environment; the commit comes
# from $SENTINEL_COMMIT when the builder sets it, else from git, else "unknown".
set -eu
PATH=${PATH:-/usr/bin:/bin}
export PATH
cd "$(dirname "$0")"

commit=${SENTINEL_COMMIT:-}
if [ -z "$commit" ]; then
    commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
fi
case $commit in
    *[!0-9a-fA-F]*) [ "$commit" = unknown ] || { echo "build.sh: bad commit id" >&2; exit 1; } ;;
esac
short=$(printf '%.12s' "$commit")

rm -rf public
mkdir -p public
cp -R src/. public/
for f in public/*.html; do
    [ -f "$f" ] || continue
    sed "s/@COMMIT@/$short/g" "$f" >"$f.tmp"
    mv "$f.tmp" "$f"
done
echo "build.sh: built public/ for commit $short"
