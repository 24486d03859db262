"""The one benchmark harness: interleaved timing rounds, the machine record, percentiles and the report files.

Every benchmark under ``export/bench`` (and ``make demo``'s latency line) times through :func:`time_call` and
:func:`interleaved_rounds`, summarises with :func:`percentiles` / :func:`summarize_rounds`, claims a ratio of two
things only through :func:`ratio_verdict` (never when their rounds disagree: other load on the machine, thread
oversubscription), records the machine with :func:`machine`, renders tables with :func:`markdown_table` and writes
its JSON, Markdown and PNG with :func:`write_report` (atomically).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from runtime.files import temp_path_beside, write_json_atomic, write_text_atomic

__all__ = [
    "logger",
    "machine",
    "machine_line",
    "load_average",
    "time_call",
    "Rounds",
    "interleaved_rounds",
    "percentiles",
    "summarize_rounds",
    "spread_stats",
    "ratio_verdict",
    "markdown_table",
    "write_report",
    "save_figure",
    "ROUNDS",
    "SPREAD_TOLERANCE",
]

#: interleaved rounds by default
ROUNDS = 5
#: a side whose round medians spread (max - min) more than this fraction of their median is too noisy to compare
SPREAD_TOLERANCE = 0.25
#: libraries a benchmark's numbers depend on beyond the runtime's (the runtime's own come from the fingerprint)
BENCH_PACKAGES = ("torch", "transformers", "av")


# --------------------------------------------------------------------------- logging


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (test runners swap it), never to a stream captured at setup."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def logger(tag: str) -> logging.Logger:
    """The progress logger of benchmark ``tag``: ``[bench-<tag>] message`` on stderr."""
    root = logging.getLogger("bench")
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logging.getLogger(f"bench.{tag}")


# --------------------------------------------------------------------------- the machine


def load_average() -> dict[str, Any]:
    """The 1/5/15-minute load averages and the core count (``{"available": False}`` where the OS has none)."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):
        return {"available": False, "cores": os.cpu_count()}
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2), "cores": os.cpu_count()}


def machine() -> dict[str, Any]:
    """The machine record of a report: :func:`runtime.device.fingerprint` (CPU and ISA, GPUs, backend versions, the
    record's key), the benchmark libraries' versions, the load average now and the UTC date."""
    from runtime.device import fingerprint

    record = fingerprint()
    extra = {}
    for pkg in BENCH_PACKAGES:
        try:
            extra[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {
        **record,
        "bench_packages": extra,
        "load_average": load_average(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def machine_line(record: dict[str, Any]) -> str:
    """One line for a report's header: :func:`runtime.device.summary`, the bench libraries and the load."""
    from runtime.device import summary

    la = record.get("load_average") or {}
    extra = ", ".join(f"{k} {v}" for k, v in (record.get("bench_packages") or {}).items())
    load = f"; 1-min load {la['1min']} on {la['cores']} cores" if "1min" in la else ""
    return f"{summary(record)}{'; ' + extra if extra else ''}{load}; {record.get('date', '')}"


# --------------------------------------------------------------------------- timing


def time_call(fn: Callable[[], Any], iters: int, warmup: int = 0, min_seconds: float = 0.0) -> list[float]:
    """Wall-clock seconds of ``iters`` calls of ``fn`` after ``warmup`` calls (more while under ``min_seconds``,
    at most ``10 * iters``)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < iters or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
        if len(samples) >= 10 * iters:
            break
    return samples


@dataclass
class Rounds:
    """Samples (seconds) per name and round: ``wall[name][round]`` is that round's list; ``cpu`` likewise (process
    CPU time), filled when asked for."""

    wall: dict[str, list[list[float]]] = field(default_factory=dict)
    cpu: dict[str, list[list[float]]] = field(default_factory=dict)

    def flat(self, name: str, which: str = "wall") -> list[float]:
        return [v for r in getattr(self, which)[name] for v in r]

    def round_medians(self, name: str) -> list[float]:
        return [float(np.median(r)) for r in self.wall[name]]


def interleaved_rounds(
    fns: dict[str, Callable[[], Any]],
    rounds: int = ROUNDS,
    iters: int | dict[str, int] = 1,
    warmup: int = 1,
    cpu_time: bool = False,
    on_round: Callable[[int, Rounds], None] | None = None,
) -> Rounds:
    """Time each function in ``rounds`` rounds of ``iters`` calls, the order rotated every round (with two
    functions: who goes first alternates), so load that comes and goes hits all alike."""
    if rounds < 1:
        raise ValueError(f"rounds: expected at least 1, got {rounds}")
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    out = Rounds({n: [] for n in names}, {n: [] for n in names} if cpu_time else {})
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            n = iters[name] if isinstance(iters, dict) else iters
            if cpu_time:
                wall, cpu = [], []
                for _ in range(n):
                    c0, t0 = time.process_time(), time.perf_counter()
                    fns[name]()
                    wall.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
                out.wall[name].append(wall)
                out.cpu[name].append(cpu)
            else:
                out.wall[name].append(time_call(fns[name], n))
        if on_round is not None:
            on_round(r, out)
    return out


# --------------------------------------------------------------------------- statistics


def percentiles(samples: Sequence[float]) -> dict[str, Any]:
    """p50/p90/p99 and mean in milliseconds of ``samples`` (seconds), and their count."""
    a = np.asarray(samples, np.float64) * 1e3
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "n": int(a.size),
    }


def spread_stats(samples: Sequence[float]) -> dict[str, Any]:
    """Median, min, p10, p90 (seconds) and the relative spread (p90 - p10) / median of ``samples``."""
    t = np.asarray(samples, np.float64)
    med = float(np.median(t))
    p10, p90 = (float(v) for v in np.percentile(t, [10, 90]))
    return {
        "median_s": med,
        "min_s": float(t.min()),
        "p10_s": p10,
        "p90_s": p90,
        "spread": (p90 - p10) / med if med > 0 else float("inf"),
        "runs_s": [round(float(v), 5) for v in t],
    }


def summarize_rounds(seconds: Sequence[float]) -> dict[str, Any]:
    """Median, min, max, interquartile range and relative spread ((max - min) / median) of per-round times."""
    a = np.asarray(seconds, np.float64) * 1e3
    med = float(np.median(a))
    q1, q3 = np.percentile(a, [25, 75])
    return {
        "median_ms": med,
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
        "iqr_ms": float(q3 - q1),
        "spread": float((a.max() - a.min()) / med) if med > 0 else float("inf"),
        "rounds": int(a.size),
        "rounds_ms": [float(v) for v in a],
    }


def ratio_verdict(
    subject: Sequence[float],
    reference: Sequence[float],
    tolerance: float = SPREAD_TOLERANCE,
    names: tuple[str, str] = ("subject", "reference"),
) -> dict[str, Any]:
    """Whether per-round times support the claim "``subject`` takes ``ratio`` x the time of ``reference``".

    A claim needs at least three rounds per side and each side's rounds within ``tolerance`` of their median
    (max - min); otherwise ``ratio`` is None and ``reason`` says why. ``ratio_range`` is the lowest and highest
    ratio the rounds allow. ``names`` name the sides in the reason."""
    s, r = summarize_rounds(subject), summarize_rounds(reference)
    reasons = []
    for name, side in zip(names, (s, r)):
        if side["rounds"] < 3:
            reasons.append(f"{name}: {side['rounds']} round(s), at least 3 needed")
        elif side["spread"] > tolerance:
            reasons.append(
                f"{name} rounds disagree: {side['min_ms']:.3g}..{side['max_ms']:.3g} ms, a spread of "
                f"{side['spread']:.0%} of the median (tolerance {tolerance:.0%})"
            )
    out: dict[str, Any] = {"subject": s, "reference": r, "tolerance": tolerance}
    if reasons:
        return {
            **out,
            "ratio": None,
            "ratio_range": None,
            "reason": "no ratio claimed: " + "; ".join(reasons) + " (the machine is busy or unsteady)",
        }
    return {
        **out,
        "ratio": s["median_ms"] / r["median_ms"],
        "ratio_range": [s["min_ms"] / r["max_ms"], s["max_ms"] / r["min_ms"]],
        "reason": None,
    }


# --------------------------------------------------------------------------- reports


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table as lines; cells are ``str()``-ed, ``None`` shows as ``-`` and ``|`` is escaped."""

    def cell(v: Any) -> str:
        return "-" if v is None else str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(path, ".png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_report_dir(out_dir: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Refuse, before a benchmark runs, a report folder that is an existing file or is (or lies inside) an input
    folder such as the bundle measured: a report written there would change the bundle's folder."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out_dir}: exists and is not a folder; expected the report folder")
    target = out.resolve()
    for src in inputs:
        if (
            src is not None
            and Path(src).is_dir()
            and (target == Path(src).resolve() or Path(src).resolve() in target.parents)
        ):
            raise ValueError(f"--out {out_dir}: is inside the input folder {src}; write the report elsewhere")
    return out


def write_report(
    out_dir: str | os.PathLike,
    stem: str,
    report: dict[str, Any],
    markdown: str | None = None,
    plot: Callable[[dict[str, Any], Path], Any] | None = None,
) -> list[Path]:
    """``<stem>.json`` (and ``<stem>.md``, ``<stem>.png`` when given) in ``out_dir``, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_json_atomic(out / f"{stem}.json", report)]
    if markdown is not None:
        paths.append(write_text_atomic(out / f"{stem}.md", markdown))
    if plot is not None:
        plot(report, out / f"{stem}.png")
        paths.append(out / f"{stem}.png")
    return paths
