"""Train a BRC agent: ``python -m mtrl.train``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("usage: python -m mtrl.train [--help]\n\nThe BRC agent and training loop are not built yet.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
