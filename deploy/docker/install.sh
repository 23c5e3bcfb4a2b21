#!/bin/sh
# How a Parley image installs one service. The Dockerfile runs these steps, and tests/images runs the
# very same ones into a fresh virtual environment to prove the image would work.
#
#   install.sh requirements <service> <out.txt>   the service's locked third-party requirements (with
#                                                 hashes, no dev group, no workspace members)
#   install.sh deps <requirements.txt> <venv>     a new venv holding exactly those requirements
#   install.sh project <service> <venv> [<src>]   parley-common and the service itself, non-editable
#
# Only the service's own package and its declared dependencies end up in the venv: no other service, no
# test or lint tool. PYTHON picks the interpreter for the venv (default: python3).
set -eu

usage() {
  echo "usage: $0 requirements <service> <out> | deps <requirements> <venv> | project <service> <venv> [<src>]" >&2
  exit 2
}

[ $# -ge 3 ] || usage
step=$1
shift
case "$step" in
  requirements)
    uv export --frozen --no-dev --no-emit-workspace --no-header --format requirements-txt \
      --package "parley-$1" --output-file "$2" --quiet
    ;;
  deps)
    uv venv --quiet --python "${PYTHON:-python3}" "$2"
    uv pip install --quiet --python "$2/bin/python" --require-hashes --no-deps --requirement "$1"
    ;;
  project)
    src=${3:-.}
    uv pip install --quiet --python "$2/bin/python" --no-deps "$src/libs/common" "$src/services/$1"
    ;;
  *)
    usage
    ;;
esac
