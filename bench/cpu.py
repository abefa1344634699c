"""CPU seconds spent by each process of a benchmark, for a per-item CPU budget.

A rate measured on a shared machine moves with everything else that runs there;
the CPU time each process spends per item does not. With it a run says which
process bounds the path and what rate the machine's cores could reach at best
(cores × 1000 / total CPU ms per item), whatever the load. Linux only (``/proc``);
elsewhere the figures are omitted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far; ``None`` where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime


@dataclass
class CpuMeter:
    """Snapshots of named processes' CPU seconds; :meth:`per_item` is the difference."""

    pids: dict[str, int]
    start: dict[str, float] = field(default_factory=dict)

    def begin(self) -> None:
        self.start = {n: s for n, p in self.pids.items() if (s := cpu_seconds(p)) is not None}

    def per_item_ms(self, items: int) -> dict[str, float]:
        """CPU milliseconds per item of each process since :meth:`begin`, and ``total``."""
        out: dict[str, float] = {}
        for name, pid in self.pids.items():
            now = cpu_seconds(pid)
            if now is not None and name in self.start:
                out[name] = (now - self.start[name]) * 1000 / max(1, items)
        if out:
            out["total"] = sum(out.values())
        return out


def ceiling_per_s(per_item_ms: dict[str, float], cores: int | None = None) -> float | None:
    """The most items per second the machine's cores allow at this CPU cost per item."""
    total = per_item_ms.get("total")
    if not total:
        return None
    return (cores or os.cpu_count() or 1) * 1000 / total
