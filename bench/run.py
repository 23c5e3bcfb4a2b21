"""``make bench``: run every ``bench/bench_*.py`` (or the ones named) and write ``bench/results/*.json``.

Each module has ``run(ctx: BenchContext) -> dict``; the dict (plus the machine's description) is written
to ``bench/results/<name>.json`` and a one-line summary is printed. Compare ratios measured in one run
rather than absolute times across runs: this is a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from bench.context import BenchContext, write_results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="*", help="bench modules to run (default: all)")
    args = parser.parse_args()
    here = Path(__file__).parent
    names = args.names or sorted(p.stem.removeprefix("bench_") for p in here.glob("bench_*.py"))
    failed = 0
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        ctx = BenchContext.open(name)
        started = time.monotonic()
        try:
            results = module.run(ctx)
            results["wall_seconds"] = round(time.monotonic() - started, 1)
            results["notes"] = ctx.notes
            path = write_results(name, results)
            print(
                f"[bench] {name}: {json.dumps(results.get('summary', {}))} -> {path.relative_to(here.parent)}"
            )
        except Exception as exc:  # noqa: BLE001 - report and go on to the next benchmark
            failed += 1
            print(f"[bench] {name} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            ctx.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
