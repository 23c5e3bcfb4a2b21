#!/bin/sh
# The web UI's static files for the nginx image, from whatever web/ holds in the build context:
# a Node project (package.json) is built with `npm ci && npm run build` and its dist/ served; plain static
# files are served as they are; with no web/ at all, a placeholder page says where the API is.
set -eu
ctx=$1
site=$2
mkdir -p "$site"
if [ -f "$ctx/web/package.json" ]; then
  cp -R "$ctx/web" /tmp/web-build
  cd /tmp/web-build
  npm ci --no-audit --no-fund
  npm run build
  cp -R dist/. "$site/"
elif [ -d "$ctx/web" ]; then
  cp -R "$ctx/web/." "$site/"
fi
if [ ! -f "$site/index.html" ]; then
  printf '%s\n' '<!doctype html><meta charset="utf-8"><title>Parley</title><p>Parley: the API is at <code>/v1</code>.</p>' \
    > "$site/index.html"
fi
