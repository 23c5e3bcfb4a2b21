"""Waits until the gateway is ready, then prints how to use it (a process of ``make run``)."""

from __future__ import annotations

import os
import signal
import time

import httpx

GATEWAY = os.environ.get("PARLEY_PUBLIC_URL", "http://localhost:8000")
OFFLINE = os.environ.get("PARLEY_OFFLINE_MODEL") == "1"


def main() -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(GATEWAY + "/readyz", timeout=1).is_success:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        print("the gateway did not become ready within 120 s; see its lines above")
        return
    model = "gpt-4o-mini"
    print(
        f"""
Parley is up at {GATEWAY}
{"  (no provider configured: answers come from the built-in OFFLINE model, the fake provider)" if OFFLINE else ""}

  # create an account and get a token
  curl -s {GATEWAY}/v1/auth/register -H 'content-type: application/json' \\
       -d '{{"email":"me@example.com","password":"a long password"}}'
  export TOKEN=$(curl -s {GATEWAY}/v1/auth/login -H 'content-type: application/json' \\
       -d '{{"email":"me@example.com","password":"a long password"}}' | python3 -c 'import sys,json;print(json.load(sys.stdin)["access_token"])')

  # a chat completion
  curl -s {GATEWAY}/v1/chat/completions -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \\
       -d '{{"model":"{model}","messages":[{{"role":"user","content":"hello"}}]}}'

  # the same with the openai SDK
  .venv/bin/python -c "import openai,os; c=openai.OpenAI(base_url='{GATEWAY}/v1', api_key=os.environ['TOKEN']); \\
print(c.chat.completions.create(model='{model}', messages=[{{'role':'user','content':'hello'}}]).choices[0].message.content)"

Ctrl-C stops everything.
""",
        flush=True,
    )
    signal.pause()


if __name__ == "__main__":
    main()
