"""Fastest collaborative-inference scheme within an accuracy-loss bound.

    python latency_search.py -accuracy_loss 0.01 -bandwidth 1
"""

from cli.run import run_cli
from search.cli import run


def main(argv: list[str] | None = None) -> int:
    return run("latency", argv)


if __name__ == "__main__":
    run_cli(main)
