"""What every benchmark shares: interleaved timing with medians, the machine's description, and RESULTS.md.

The machine is shared and noisy, so a benchmark never compares numbers taken at different times: it runs its
variants one after another inside each repeat (``interleaved``), many repeats, and compares medians. Load
averages before and after go into the results, so a reader can tell a quiet run from a crowded one.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

RESULTS_PATH = Path(__file__).with_name("RESULTS.md")
HEADER = """# Benchmark results

Written by the benchmark scripts (`make bench`, or `python benchmarks/<name>.py` for one section); do not edit by
hand. Each section is the latest run of one benchmark. Ratios compare medians of variants timed side by side
(interleaved) in the same run. The searchers compared on held-out accuracy (Bit Fusion latency and energy budgets
on digits, MiniLM at two latency budgets) are full `mpq-rl compare` runs of several minutes to an hour each: their
tables are in docs/results.md, docs/results-energy.md and docs/results-minilm.md, written by
`experiments/collect_results.py`, with the command that reproduces each.
"""
PACKAGES = ("torch", "numpy", "gymnasium", "transformers")
"""Versions recorded with every result."""


def interleaved(
    variants: Mapping[str, Callable[[], Any]],
    repeats: int,
    counts: Mapping[str, int] | None = None,
    before: Mapping[str, Callable[[], Any]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each variant, over ``repeats`` rounds that call every variant once, in turn.

    The order rotates each round, so no variant always runs right after the same neighbour (warm caches, a
    frequency step) and a burst of load on the machine hits all variants alike. A variant named in ``counts``
    runs only in that many rounds (the first ones), for slow baselines; ``before`` names untimed setup to run
    right before a variant's timed call.
    """
    names = list(variants)
    counts = counts or {}
    before = before or {}
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if len(times[name]) >= counts.get(name, repeats):
                continue
            if name in before:
                before[name]()
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median over rounds of ``numerator[r] / denominator[r]``, both timed in the same round of
    :func:`interleaved`: a drift of the machine's speed during the run (common on shared machines) cancels
    within each pair, where a ratio of two medians would carry it."""
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=False))


def median_ms(seconds: list[float]) -> float:
    return 1e3 * statistics.median(seconds)


def machine() -> dict[str, Any]:
    """The machine, the software and the load it ran under, for the results' header."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": _load(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        **versions,
    }


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        if found:
            return found.group(1).strip()
    return platform.processor() or "unknown"


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def machine_lines(before: Mapping[str, Any], after_load: str) -> list[str]:
    """Markdown bullet lines describing the machine, with the load average at the start and the end."""
    return [
        f"- date: {before['date']}; load average (1, 5, 15 min) {before['load_average']} at start, {after_load} at end",
        f"- machine: {before['cpu']}, {before['cores']} cores; torch threads: {before['torch_threads']}",
        f"- platform: {before['platform']}; Python {before['python']}",
        "- versions: " + ", ".join(f"{p} {before[p]}" for p in PACKAGES),
    ]


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


Writer = Callable[[str, list[str]], None]
"""Where a benchmark's markdown section goes: :func:`write_section`, or a stand-in in tests."""


def publish(name: str, lines: list[str], write: Writer) -> None:
    """Print benchmark ``name``'s section and hand it to ``write``."""
    print("\n".join(lines))
    write(name, lines)


def write_section(name: str, lines: list[str], path: Path = RESULTS_PATH) -> None:
    """Replace benchmark ``name``'s section of RESULTS.md (between its markers), keeping the other sections."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = "\n".join([start, *lines, end])
    text = path.read_text() if path.is_file() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    path.write_text(text.rstrip("\n") + "\n")


def verdict(value: float, target: float, at_most: bool) -> str:
    met = value <= target if at_most else value >= target
    return "met" if met else "**missed**"
