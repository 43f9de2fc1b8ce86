"""The benchmarks' figures from several runs: run order that cancels drift, means and spread, A/B ratios, and the
result line a child process prints."""

from __future__ import annotations

import json
from typing import Any


def round_orders(repeats: int, sides: list[str]) -> list[list[str]]:
    """The runs' order, round by round: the sides in order, reversed every other round (peer, ours, ours,
    peer, ...), so a machine whose speed drifts during the benchmark favours neither side."""
    return [list(sides) if r % 2 == 0 else list(sides)[::-1] for r in range(repeats)]


def ab_summary(a_runs: list[float], b_runs: list[float]) -> dict[str, Any]:
    """An A/B of ours (`--ab`): the means of each side's samples/s, B/A of the means, and each round's own B/A
    (round i: a_runs[i] and b_runs[i], run next to each other). Rounds whose ratios straddle 1.0 say the
    difference is inside this machine's drift."""
    if not a_runs or len(a_runs) != len(b_runs):
        raise ValueError(
            f"A/B needs the same number of runs on both sides, got {len(a_runs)} and {len(b_runs)}"
        )
    a, b = runs_summary(a_runs)["mean"], runs_summary(b_runs)["mean"]
    rounds = [round(y / x, 4) for x, y in zip(a_runs, b_runs, strict=True)]
    return {
        "a": a,
        "b": b,
        "ratio": round(b / a, 4),
        "round_ratios": rounds,
        "a_runs": list(a_runs),
        "b_runs": list(b_runs),
        # every round moved the same way: the only sign a difference is larger than the drift
        "all_rounds_agree": all(r > 1 for r in rounds) or all(r < 1 for r in rounds),
    }


def runs_summary(runs: list[float]) -> dict[str, Any]:
    """One figure from several runs spread over a benchmark (the bare loop's first and last runs; each side of
    `benchmark data` over its rounds): mean and spread ((max - min) / mean), so a machine that speeds up or slows
    down during the benchmark shows in the result."""
    if not runs:
        raise ValueError("no runs to summarise")
    mean = sum(runs) / len(runs)
    return {"mean": mean, "runs": [round(r, 2) for r in runs], "spread": (max(runs) - min(runs)) / mean}


def last_json(log: str, prefix: str) -> dict[str, Any]:
    """The JSON object of the last line of `log` that starts with `prefix` (a child run's result line)."""
    for line in reversed(log.splitlines()):
        if line.startswith(prefix):
            return json.loads(line[len(prefix) :])
    raise ValueError(f"no line starting with {prefix!r}")
