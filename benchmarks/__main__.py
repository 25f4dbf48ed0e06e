"""`python -m benchmarks [NAME [--json] [--smoke] ...]`."""
from __future__ import annotations

import importlib
import sys

from benchmarks import BENCHMARKS


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "list"):
        width = max(map(len, BENCHMARKS))
        for name, (_, summary) in BENCHMARKS.items():
            print(f"{name:<{width}}  {summary}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"error: unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})", file=sys.stderr)
        return 2
    importlib.import_module(BENCHMARKS[name][0]).main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
