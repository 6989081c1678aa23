"""Wall time of `diffier --help` and `diffier t2i --help`, next to a bare interpreter start.

    python benchmarks/help_time.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

DIFFIER = str(Path(sys.executable).with_name("diffier"))


def median_wall(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    result = {
        "python -c pass": median_wall([sys.executable, "-c", "pass"], args.repeats),
        "diffier --help": median_wall([DIFFIER, "--help"], args.repeats),
        "diffier t2i --help": median_wall([DIFFIER, "t2i", "--help"], args.repeats),
        "python -c 'import torch'": median_wall([sys.executable, "-c", "import torch"], max(3, args.repeats // 5)),
    }
    print(json.dumps({name: round(seconds, 3) for name, seconds in result.items()}, indent=2))


if __name__ == "__main__":
    main()
