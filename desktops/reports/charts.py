"""The usage page's charts, drawn on the server as SVG: no script, nothing to load.

Every label goes through `format_html` (names are people's text); each bar, cell and
point carries a `<title>`, which browsers show on hover and screen readers read. Colours
are presentation attributes, not `style`, for the Content-Security-Policy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, datetime

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from desktops.reports.selectors import HostLoadSeries

WIDTH = 760
BAR = "#1f5fa8"
INK = "#1d1d1d"
GRID = "#d0d0d0"
#: One per host, told apart also by the legend's order (8 hosts before a colour repeats).
LINES = ("#1f5fa8", "#b8420f", "#2a7d2e", "#7a3ea1", "#9c6b00", "#0f7b84", "#a3224f", "#4d4d4d")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _nice_top(value: float) -> float:
    """A round number at or above `value` for the top of an axis."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _svg(title: str, height: int, body: SafeString) -> SafeString:
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {} {}" role="img" '
        'aria-label="{}" class="chart" width="100%" preserveAspectRatio="xMinYMin meet">'
        "{}</svg>",
        WIDTH,
        height,
        title,
        body,
    )


def _y_axis(top: float, *, left: int, plot_top: int, plot_height: int, unit: str) -> SafeString:
    ticks = [top * n / 4 for n in range(5)]
    return format_html_join(
        "",
        '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}" stroke-width="1"/>'
        '<text x="{}" y="{}" font-size="11" text-anchor="end" fill="{}">{}{}</text>',
        (
            (
                left,
                WIDTH - 10,
                y,
                y,
                GRID,
                left - 4,
                y + 4,
                INK,
                f"{tick:g}",
                unit,
            )
            for tick in ticks
            for y in [round(plot_top + plot_height - plot_height * tick / top, 1)]
        ),
    )


def hours_per_day_chart(days: Sequence[tuple[date, float]]) -> SafeString:
    """A bar per day: the desktop hours of that day."""
    left, plot_top, plot_height, height = 48, 10, 160, 200
    top = _nice_top(max((hours for _day, hours in days), default=0.0))
    slot = (WIDTH - 10 - left) / max(len(days), 1)
    label_every = max(1, math.ceil(len(days) / 12))
    bars = format_html_join(
        "",
        '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}: {} h</title></rect>',
        (
            (
                round(left + n * slot + slot * 0.1, 1),
                round(plot_top + plot_height - bar, 1),
                round(max(slot * 0.8, 1), 1),
                round(bar, 1),
                BAR,
                day.isoformat(),
                f"{hours:g}",
            )
            for n, (day, hours) in enumerate(days)
            for bar in [plot_height * hours / top]
        ),
    )
    labels = format_html_join(
        "",
        '<text x="{}" y="{}" font-size="11" text-anchor="middle" fill="{}">{}</text>',
        (
            (round(left + n * slot + slot / 2, 1), plot_top + plot_height + 16, INK, f"{day:%d %b}")
            for n, (day, _hours) in enumerate(days)
            if n % label_every == 0
        ),
    )
    axis = _y_axis(top, left=left, plot_top=plot_top, plot_height=plot_height, unit=" h")
    return _svg("Desktop hours per day", height, format_html("{}{}{}", axis, bars, labels))


def busiest_times_chart(week: Sequence[Sequence[float]]) -> SafeString:
    """A cell per hour of the week, darker where more desktops ran on average."""
    left, top_margin, cell_w, cell_h = 48, 18, (WIDTH - 58) / 24, 24
    height = top_margin + 7 * cell_h + 8
    peak = max((value for day in week for value in day), default=0.0) or 1.0
    cells = format_html_join(
        "",
        '<rect x="{}" y="{}" width="{}" height="{}" fill="{}" fill-opacity="{}" '
        'stroke="{}" stroke-width="0.5"><title>{} {}:00: {} desktops on average</title></rect>',
        (
            (
                round(left + hour * cell_w, 1),
                top_margin + day * cell_h,
                round(cell_w, 1),
                cell_h,
                BAR,
                round(0.04 + 0.96 * value / peak, 3) if value else 0,
                GRID,
                WEEKDAYS[day],
                f"{hour:02d}",
                f"{value:g}",
            )
            for day, values in enumerate(week)
            for hour, value in enumerate(values)
        ),
    )
    days = format_html_join(
        "",
        '<text x="{}" y="{}" font-size="11" text-anchor="end" fill="{}">{}</text>',
        ((left - 6, top_margin + d * cell_h + 16, INK, name) for d, name in enumerate(WEEKDAYS)),
    )
    hours = format_html_join(
        "",
        '<text x="{}" y="{}" font-size="11" text-anchor="middle" fill="{}">{}</text>',
        ((round(left + h * cell_w + cell_w / 2, 1), 12, INK, f"{h:02d}") for h in range(0, 24, 3)),
    )
    return _svg(
        "Busiest times of the week: desktops running on average",
        height,
        format_html("{}{}{}", cells, days, hours),
    )


def host_load_chart(series: Sequence[HostLoadSeries], *, measure: str) -> SafeString:
    """A line per host: its CPU (`cpu_load`) or memory (`memory_used`) in use, in %."""
    left, plot_top, plot_height = 48, 10, 160
    legend_top = plot_top + plot_height + 28
    height = legend_top + 18 * len(series) + 4
    moments = [point.at for host in series for point in host.points]
    if not moments:
        return mark_safe("")
    first, last = min(moments), max(moments)
    span = (last - first).total_seconds() or 1.0

    def x(at: datetime) -> float:
        return round(left + (WIDTH - 10 - left) * (at - first).total_seconds() / span, 1)

    def y(value: float) -> float:
        return round(plot_top + plot_height - plot_height * min(max(value, 0.0), 1.0), 1)

    lines = []
    for n, host in enumerate(series):
        colour = LINES[n % len(LINES)]
        points = " ".join(f"{x(p.at)},{y(getattr(p, measure))}" for p in host.points)
        dots = format_html_join(
            "",
            '<circle cx="{}" cy="{}" r="2" fill="{}"><title>{} {}: {}%</title></circle>',
            (
                (
                    x(p.at),
                    y(getattr(p, measure)),
                    colour,
                    host.name,
                    f"{p.at:%Y-%m-%d %H:%M}",
                    round(100 * getattr(p, measure)),
                )
                for p in host.points
            ),
        )
        lines.append(
            format_html(
                '<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>{}'
                '<rect x="{}" y="{}" width="14" height="4" fill="{}"/>'
                '<text x="{}" y="{}" font-size="12" fill="{}">{}</text>',
                points,
                colour,
                dots,
                left,
                legend_top + 18 * n - 4,
                colour,
                left + 20,
                legend_top + 18 * n,
                INK,
                host.name,
            )
        )
    axis = _y_axis(100, left=left, plot_top=plot_top, plot_height=plot_height, unit="%")
    ends = format_html(
        '<text x="{}" y="{}" font-size="11" fill="{}">{}</text>'
        '<text x="{}" y="{}" font-size="11" text-anchor="end" fill="{}">{}</text>',
        left,
        plot_top + plot_height + 14,
        INK,
        f"{first:%d %b %H:%M}",
        WIDTH - 10,
        plot_top + plot_height + 14,
        INK,
        f"{last:%d %b %H:%M}",
    )
    what = "CPU" if measure == "cpu_load" else "Memory"
    return _svg(
        f"{what} in use on each host over time",
        height,
        format_html("{}{}{}", axis, ends, format_html_join("", "{}", ((line,) for line in lines))),
    )
