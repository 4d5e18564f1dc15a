"""Most accurate collaborative-inference scheme within a latency budget.

    python accuracy_search.py -latency 0.6 -bandwidth 1
"""

from cli.run import run_cli
from search.cli import run


def main(argv: list[str] | None = None) -> int:
    return run("accuracy", argv)


if __name__ == "__main__":
    run_cli(main)
