#!/usr/bin/env bash
# Install the pgvector extension into the local PostgreSQL when it is missing (chat stores document
# embeddings with it). Debian bookworm does not package it for PostgreSQL 15, so it is built from
# Debian's own source tarball (pinned version, sha256-checked) against the installed server's headers.
set -euo pipefail

VERSION=0.8.0
SHA256=867a2c328d4928a5a9d6f052cd3bc78c7d60228a9b914ad32aa3db88e9de27b0
URL="http://deb.debian.org/debian/pool/main/p/pgvector/pgvector_${VERSION}.orig.tar.gz"

say() { printf '\033[1m[pgvector]\033[0m %s\n' "$*"; }

major=$(ls /etc/postgresql | sort -V | tail -n1)
if [ -f "/usr/share/postgresql/${major}/extension/vector.control" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  say "missing: install pgvector for PostgreSQL ${major} (https://github.com/pgvector/pgvector)"; exit 1
fi

say "building pgvector ${VERSION} for PostgreSQL ${major}"
server=$(dpkg-query -W -f='${Version}' "postgresql-${major}")
# The headers must match the running server exactly; the tools are installed only when missing.
packages=("postgresql-server-dev-${major}=${server}")
for tool in gcc make curl; do command -v "$tool" >/dev/null || packages+=("$tool"); done
if ! apt-cache show "postgresql-server-dev-${major}=${server}" >/dev/null 2>&1; then
  apt-get update -q >/dev/null
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}" >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -fsSL --retry 3 -o "$work/pgvector.tar.gz" "$URL"
echo "${SHA256}  $work/pgvector.tar.gz" | sha256sum -c --quiet -
tar xzf "$work/pgvector.tar.gz" -C "$work" --strip-components=1
# OPTFLAGS="": no -march=native, so the library runs on any machine of this kind.
make -s -C "$work" OPTFLAGS="" >/dev/null
make -s -C "$work" install >/dev/null
say "installed"
