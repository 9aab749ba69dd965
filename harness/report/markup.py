"""The report's table model and text formatting: cells, tables, Markdown escaping, numbers.

A ``Table`` is rendered twice from one object: ``Table.md()`` for Markdown, the HTML template for HTML
(jinja2's autoescape). Every string that comes from a run (method names, errors, model generations) goes
through ``md_cell`` / ``md_text`` / ``fence`` in Markdown, so it cannot inject HTML or break a table.

Number formats (a contract of the report's text, which tests and readers parse):
``pct`` 0.55 -> '55.0'; ``pp`` 0.05 -> '+5.0' (percentage points); ``fmt_score`` '55.0 ± 7.1 (n=2)';
``num`` 1.5e9 -> '1.5G' (three significant digits, SI suffix); ``fmt_lr`` 1e-3 -> '0.001'.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Cell:
    text: str
    bold: bool = False
    sub: list[tuple[str, str]] = field(default_factory=list)  # (text, css class) lines under the value
    cls: str = ""


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]
    groups: list[tuple[str, int]] | None = None  # a first header row: (label, colspan)
    id: str = ""
    caption: str = ""
    left: tuple[int, ...] = (0,)  # text columns (left-aligned); the others hold numbers

    def md(self) -> str:
        """The table in Markdown; a group label goes under its column's header, after ``<br>``."""
        if self.groups:
            spans = [g for g, n in self.groups for _ in range(n)]
            header = [
                md_cell(h) + (f"<br>{md_cell(g)}" if g else "")
                for h, g in zip(self.header, spans, strict=True)
            ]
        else:
            header = [md_cell(h) for h in self.header]
        align = ["---" if i in self.left else "--:" for i in range(len(header))]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
        for row in self.rows:
            cells = []
            for c in row:
                text = md_cell(c.text)
                if c.bold and text:
                    text = f"**{text}**"
                text += "".join(f"<br>{md_cell(s)}" for s, _ in c.sub)
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ escaping
def md_cell(text: Any) -> str:
    """A Markdown table cell that cannot inject HTML or break the table."""
    s = "" if text is None else str(text)
    s = (
        s.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "\\|")
        .replace("*", "\\*")
    )
    return s.replace("\r", " ").replace("\n", " ")


def md_text(text: Any) -> str:
    """Markdown running text (outside a table: a ``|`` needs no escape)."""
    return md_cell(text).replace("\\|", "|")


def fence(text: str) -> str:
    """A fenced code block longer than any backtick run inside ``text`` (so the text cannot close it)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}text\n{text}\n{ticks}"


# ------------------------------------------------------------------------------------- numbers
def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def pp(x: float) -> str:
    return f"{100 * x:+.1f}"


def isnan(x: Any) -> bool:
    """None or a float NaN (pandas' marker of a missing value in an object column)."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_score(mean: float, std: float, n: int) -> str:
    """'55.0 ± 7.1 (n=2)': % mean over seeds, sample std (omitted for one seed), n seeds."""
    s = pct(mean)
    if n > 1 and not isnan(std):
        s += f" ± {pct(std)}"
    return f"{s} (n={n})"


def num(x: Any, unit: str = "") -> str:
    if isnan(x):
        return "–"
    x = float(x)
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def fmt_lr(x: float) -> str:
    return f"{x:g}"
