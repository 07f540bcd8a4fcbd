"""Inline SVG charts drawn here, server-side: no script, no third-party code, readable without
JavaScript, and a ``<title>`` on every bar and point so hovering tells the exact figure."""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape

from markupsafe import Markup

from ..decide import LOST, RETRIED
from ..wire import State
from .summary import Minute

__all__ = ["latency_chart", "throughput_chart"]

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 180, 44, 20, 10
_STACK = ((State.SUCCEEDED, "ok", "succeeded"), (RETRIED, "retry", "retried"), (LOST, "retry", "lost"),
          (State.FAILED, "bad", "failed"))  # fmt: skip


def _clock(minute: int) -> str:
    return time.strftime("%H:%M", time.gmtime(minute * 60))


def _frame(top: float, unit: str, series: Sequence[Minute], label: str) -> list[str]:
    plot_h = HEIGHT - BOTTOM - TOP
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="none">',
        f"<title>{escape(label)}</title>",
        f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH}" y2="{TOP + plot_h}"/>',
        f'<line class="grid" x1="{LEFT}" y1="{TOP}" x2="{WIDTH}" y2="{TOP}"/>',
        f'<text class="tick" x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end">{escape(_short(top))}{unit}</text>',
        f'<text class="tick" x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end">0</text>',
    ]
    if series:
        step = (WIDTH - LEFT) / len(series)
        last = len(series) - 1
        for i, m in enumerate(series):
            if i == last or (m.minute % 15 == 0 and last - i > 4):  # quarter hours, and now (never on top of each other)
                x = LEFT + i * step + step / 2
                anchor = "end" if i == last else "middle"
                parts.append(f'<text class="tick" x="{x:.1f}" y="{HEIGHT - 4}" text-anchor="{anchor}">{_clock(m.minute)}</text>')
    return parts


def throughput_chart(series: Sequence[Minute]) -> Markup:
    """Attempts ended per minute, stacked: succeeded, retried or lost, failed (UTC times)."""
    totals = [sum(m.kinds.get(k, 0.0) for k, _, _ in _STACK) for m in series]
    top = max([*totals, 1.0])
    parts = _frame(top, "/min", series, "jobs per minute over the last hour: succeeded, retried, failed")
    plot_h = HEIGHT - BOTTOM - TOP
    step = (WIDTH - LEFT) / max(len(series), 1)
    for i, m in enumerate(series):
        x = LEFT + i * step + 1
        y = float(TOP + plot_h)
        counts = ", ".join(f"{int(m.kinds.get(k, 0))} {word}" for k, _, word in _STACK if m.kinds.get(k))
        parts.append(f"<g><title>{_clock(m.minute)} UTC: {escape(counts or 'nothing ended')}</title>")
        parts.append(f'<rect class="hit" x="{x:.1f}" y="{TOP}" width="{max(step - 2, 1):.1f}" height="{plot_h}"/>')
        for kind, css, _ in _STACK:
            n = m.kinds.get(kind, 0.0)
            if n <= 0:
                continue
            h = plot_h * n / top
            y -= h
            parts.append(f'<rect class="{css}" x="{x:.1f}" y="{y:.1f}" width="{max(step - 2, 1):.1f}" height="{h:.1f}"/>')
        parts.append("</g>")
    parts.append("</svg>")
    return Markup("".join(parts))


def latency_chart(series: Sequence[Minute]) -> Markup:
    """Per minute: run time p50 and p95, and queue wait p95, in milliseconds (bucket estimates)."""
    lines = (
        ("p50 run", "ok", [m.run.quantile(0.5) for m in series]),
        ("p95 run", "bad", [m.run.quantile(0.95) for m in series]),
        ("p95 wait", "wait", [m.wait.quantile(0.95) for m in series]),
    )
    values = [v * 1000 for _, _, points in lines for v in points if v is not None]
    top = max([*values, 1.0])
    parts = _frame(top, "ms", series, "run time p50 and p95, queue wait p95, per minute (ms)")
    plot_h = HEIGHT - BOTTOM - TOP
    step = (WIDTH - LEFT) / max(len(series), 1)
    for label, css, points in lines:
        path: list[str] = []
        for i, value in enumerate(points):
            if value is None:
                if path:
                    parts.append(f'<polyline class="line {css}" points="{" ".join(path)}"/>')
                path = []
                continue
            x = LEFT + i * step + step / 2
            y = TOP + plot_h - plot_h * (value * 1000) / top
            path.append(f"{x:.1f},{y:.1f}")
            parts.append(
                f'<circle class="dot {css}" cx="{x:.1f}" cy="{y:.1f}" r="2">'
                f"<title>{_clock(series[i].minute)} UTC {label}: {value * 1000:.1f} ms</title></circle>"
            )
        if path:
            parts.append(f'<polyline class="line {css}" points="{" ".join(path)}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _short(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"
