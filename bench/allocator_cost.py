"""What the native allocator costs per frame: ``rt-portrait bench`` on glibc and on jemalloc,
alternated in one run (so load drifts hit both), reporting the median of each stage and the
ratio. The soak (bench/soak.py) measures what each does to RSS over time.

    python bench/allocator_cost.py                          # 2 rounds, 60 frames, the warp fill
    python bench/allocator_cost.py --rounds 3 -- --generator diffusion
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from rt_portrait.server.memory import JEMALLOC_CONF, jemalloc_library


def bench(allocator: str, frames: int, extra: list[str]) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    if allocator == "jemalloc":
        library = jemalloc_library()
        if library is None:
            raise SystemExit("libjemalloc not found (Debian: apt install libjemalloc2)")
        env.update(LD_PRELOAD=library, MALLOC_CONF=JEMALLOC_CONF)
    cmd = [sys.executable, "-m", "rt_portrait.cli", "bench", "--json", "--frames", str(frames), *extra]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    report = json.loads(out.stdout[out.stdout.index("{") :])
    return {k: float(v) for k, v in report["median_ms"].items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="glibc/jemalloc pairs (default 2)")
    p.add_argument("--frames", type=int, default=60, help="frames per bench run (default 60)")
    p.add_argument("extra", nargs="*", help="after --: more `rt-portrait bench` options")
    args = p.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"glibc": [], "jemalloc": []}
    for r in range(args.rounds):
        for allocator in ("glibc", "jemalloc") if r % 2 == 0 else ("jemalloc", "glibc"):
            runs[allocator].append(bench(allocator, args.frames, args.extra))
            print(f"round {r + 1} {allocator}: total {runs[allocator][-1]['total']:.1f} ms", flush=True)
    print("\n| stage | glibc ms | jemalloc ms | jemalloc / glibc |\n|---|---|---|---|")
    for stage in runs["glibc"][0]:
        g = statistics.median(run[stage] for run in runs["glibc"])
        j = statistics.median(run[stage] for run in runs["jemalloc"])
        print(
            f"| {stage} | {g:.1f} | {j:.1f} | {j / g:.2f} |"
            if g > 0
            else f"| {stage} | {g:.1f} | {j:.1f} | - |"
        )


if __name__ == "__main__":
    main()
