"""Two small chart types drawn with Pillow (a core dependency), so the benchmarks need no matplotlib.

* :func:`line_chart`: y against x for a few named series (markers joined by lines), linear axes.
* :func:`bar_chart`: grouped bars, one group per category and one bar per series.

Both write an RGB PNG of ``size`` pixels. Missing values (``None``) are skipped (a gap in the
line, no bar). Axis ticks are "nice" numbers (1, 2, 2.5, 5 x 10^n) spanning 0 .. the data maximum.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

__all__ = ["Series", "bar_chart", "line_chart"]

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")
_MARGIN = (90, 50, 30, 70)  # left, top, right, bottom (pixels)


@dataclass(frozen=True)
class Series:
    """One named series: ``x`` and ``y`` of equal length (``y`` may hold None)."""

    name: str
    x: Sequence[float]
    y: Sequence[float | None]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _nice_ticks(high: float, count: int = 5) -> list[float]:
    """Ticks from 0 to at least ``high`` with a 1/2/2.5/5 x 10^n step."""
    if high <= 0 or not math.isfinite(high):
        return [0.0, 1.0]
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(high / step - 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


class _Canvas:
    """Plot area with y ticks, axis labels and title; maps data to pixels."""

    def __init__(self, size: tuple[int, int], title: str, x_label: str, y_label: str, y_max: float) -> None:
        self.image = Image.new("RGB", size, "white")
        self.draw = ImageDraw.Draw(self.image)
        self.font = _font(14)
        self.small = _font(12)
        left, top, right, bottom = _MARGIN
        self.box = (left, top, size[0] - right, size[1] - bottom)
        self.y_ticks = _nice_ticks(y_max)
        self.y_top = self.y_ticks[-1]
        x0, y0, x1, y1 = self.box
        self.draw.text((size[0] // 2, 10), title, fill="black", font=self.font, anchor="mt")
        self.draw.text((size[0] // 2, size[1] - 12), x_label, fill="black", font=self.font, anchor="mb")
        for tick in self.y_ticks:
            y = self.y(tick)
            self.draw.line([(x0, y), (x1, y)], fill="#e5e5e5")
            self.draw.text((x0 - 6, y), _label(tick), fill="black", font=self.small, anchor="rm")
        self.draw.rectangle(self.box, outline="black")
        label = Image.new("RGBA", (max(1, y1 - y0), 20), (255, 255, 255, 0))
        ImageDraw.Draw(label).text((label.width // 2, 10), y_label, fill="black", font=self.font, anchor="mm")
        rotated = label.rotate(90, expand=True)
        self.image.paste(rotated, (8, y0), rotated)

    def y(self, value: float) -> float:
        _, y0, _, y1 = self.box
        return y1 - (y1 - y0) * value / self.y_top

    def legend(self, names: Sequence[str]) -> None:
        x0, y0, _, _ = self.box
        for n, name in enumerate(names):
            y = y0 + 10 + 18 * n
            self.draw.rectangle([x0 + 10, y - 5, x0 + 22, y + 5], fill=PALETTE[n % len(PALETTE)])
            self.draw.text((x0 + 28, y), name, fill="black", font=self.small, anchor="lm")

    def save(self, path: str | os.PathLike[str]) -> None:
        self.image.save(path, format="PNG")


def line_chart(path: str | os.PathLike[str], series: Sequence[Series], *, title: str, x_label: str,
               y_label: str, size: tuple[int, int] = (900, 560)) -> None:
    """Write a line chart of ``series`` (linear x from 0 to the largest x, linear y from 0)."""
    xs = [float(x) for s in series for x in s.x]
    ys = [float(y) for s in series for y in s.y if y is not None]
    canvas = _Canvas(size, title, x_label, y_label, max(ys, default=1.0) * 1.05)
    x_ticks = _nice_ticks(max(xs, default=1.0))
    x0, _, x1, y1 = canvas.box

    def px(value: float) -> float:
        return x0 + (x1 - x0) * value / x_ticks[-1]

    for tick in x_ticks:
        canvas.draw.line([(px(tick), y1), (px(tick), y1 + 5)], fill="black")
        canvas.draw.text((px(tick), y1 + 8), _label(tick), fill="black", font=canvas.small, anchor="mt")
    for n, s in enumerate(series):
        colour = PALETTE[n % len(PALETTE)]
        points = [(px(float(x)), canvas.y(float(y))) for x, y in zip(s.x, s.y, strict=True) if y is not None]
        if len(points) > 1:
            canvas.draw.line(points, fill=colour, width=3)
        for x, y in points:
            canvas.draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
    canvas.legend([s.name for s in series])
    canvas.save(path)


def bar_chart(path: str | os.PathLike[str], groups: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]],
              *, title: str, y_label: str, x_label: str = "", size: tuple[int, int] = (900, 560)) -> None:
    """Write grouped bars: ``series`` is ``(name, one value per group)``; values are printed on the bars."""
    values = [float(v) for _, vs in series for v in vs if v is not None]
    canvas = _Canvas(size, title, x_label, y_label, max(values, default=1.0) * 1.15)
    x0, _, x1, y1 = canvas.box
    slot = (x1 - x0) / max(1, len(groups))
    width = slot * 0.8 / max(1, len(series))
    for g, group in enumerate(groups):
        left = x0 + g * slot + slot * 0.1
        canvas.draw.text((x0 + (g + 0.5) * slot, y1 + 8), group, fill="black", font=canvas.small, anchor="mt")
        for n, (_, vs) in enumerate(series):
            value = vs[g] if g < len(vs) else None
            if value is None:
                continue
            bx = left + n * width
            canvas.draw.rectangle([bx + 1, canvas.y(float(value)), bx + width - 1, y1],
                                  fill=PALETTE[n % len(PALETTE)])
            canvas.draw.text((bx + width / 2, canvas.y(float(value)) - 3), f"{float(value):.3g}", fill="black",
                             font=canvas.small, anchor="mb")
    canvas.legend([name for name, _ in series])
    canvas.save(path)
