"""Shared benchmark plumbing: the machine's description, medians, tables, the JSON result line.

Every benchmark compares side by side in one run, interleaving the repetitions of the
contenders (A B A B ..., order alternating), so a machine that gets busier or quieter
during the run affects both alike; it reports medians, and ratios rather than lone
absolute times.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_WORKDIR = Path(os.environ.get("PIPELINE_BENCH_DIR", "/tmp/internvl-pipeline-bench"))


@dataclass
class BenchOptions:
    """What every benchmark accepts from the command line."""

    reps: int = 5
    quick: bool = False
    workdir: Path = field(default_factory=lambda: DEFAULT_WORKDIR)


def machine() -> dict[str, Any]:
    """Where the figures come from: cores, memory, load, library versions, date."""
    import numpy
    import PIL

    try:
        import torch

        torch_version = torch.__version__
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover - torch is a dependency
        torch_version, gpu = None, None
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "memory_gb": round(memory_gb, 1),
        "gpu": gpu,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
        "torch": torch_version,
    }


def median(values: Sequence[float]) -> float:
    """The median (0.0 for no values)."""
    return float(statistics.median(values)) if values else 0.0


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB since its exec: VmHWM on Linux.

    Not ru_maxrss, which Linux carries over a fork's exec: a child started by a large
    benchmark process would report the parent's size."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, columns aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(value.ljust(widths[i]) for i, value in enumerate(row)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def emit(result: dict[str, Any], workdir: Path) -> None:
    """Print the result as the last line (one JSON object) and keep a copy in the work folder."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"bench-{result['name']}.json").write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.flush()
    print(json.dumps(result, separators=(",", ":")), flush=True)


def say(line: str = "") -> None:
    """Progress and tables go to stdout, before the JSON line."""
    print(line, flush=True)


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, rounded; None when the denominator is 0."""
    return round(numerator / denominator, 3) if denominator else None
