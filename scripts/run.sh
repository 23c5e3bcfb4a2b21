#!/usr/bin/env bash
# make run: services up, database migrated, then every Parley process under one supervisor (honcho),
# with prefixed logs and a clean stop on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services_up.sh
mkdir -p .run
export PATH="$PWD/.venv/bin:$PATH"

# A development signing key, created once and kept out of git (.run/ is ignored).
if [ -z "${PARLEY_JWT_PRIVATE_KEYS:-}" ]; then
  [ -f .run/jwt-key.pem ] || python -c 'from parley_common.auth.keys import generate_private_key_pem as g; print(g())' > .run/jwt-key.pem
  chmod 600 .run/jwt-key.pem
  PARLEY_JWT_PRIVATE_KEYS="$(cat .run/jwt-key.pem)"
  export PARLEY_JWT_PRIVATE_KEYS
fi
export PARLEY_LOG_FORMAT="${PARLEY_LOG_FORMAT:-console}"
# No SMTP server configured: notify writes each email to .run/mail/<event id>.eml instead.
if [ -z "${PARLEY_SMTP_HOST:-}" ]; then
  export PARLEY_MAIL_OUTBOX_DIR="${PARLEY_MAIL_OUTBOX_DIR:-$PWD/.run/mail}"
  echo "[run] no SMTP server configured (PARLEY_SMTP_HOST): emails are written to $PARLEY_MAIL_OUTBOX_DIR"
fi

python scripts/dev_setup.py

procfile=.run/Procfile
: > "$procfile"
if [ -z "${PARLEY_OPENAI_API_KEY:-}" ] && [ -z "${PARLEY_OPENAI_BASE_URL:-}" ] && [ -z "${PARLEY_PROVIDERS:-}" ]; then
  echo "[run] no provider configured (PARLEY_PROVIDERS / PARLEY_OPENAI_API_KEY / PARLEY_OPENAI_BASE_URL): starting the offline model"
  export PARLEY_OFFLINE_MODEL=1
  echo "offline-model: parley-fake-provider --port 8090 --chunks 24 --chunk-delay-ms 40" >> "$procfile"
fi
cat >> "$procfile" <<'PROCS'
gateway: parley-gateway-api
gateway-relay: parley-gateway-relay
gateway-worker: parley-gateway-worker
chat: parley-chat-api
chat-relay: parley-chat-relay
chat-worker: env PARLEY_METRICS_PORT=9105 parley-chat-worker
usage-worker: env PARLEY_METRICS_PORT=9102 parley-usage-worker
usage-beat: env PARLEY_METRICS_PORT=9103 parley-usage-beat
usage-relay: env PARLEY_METRICS_PORT=9104 parley-usage-relay
usage-api: parley-usage-api
webhooks-api: parley-webhooks-api
webhooks-worker: parley-webhooks-worker
webhooks-beat: parley-webhooks-beat
webhooks-relay: parley-webhooks-relay
notify-worker: parley-notify-worker
ready: python scripts/banner.py
PROCS

exec honcho start -f "$procfile" -d .
