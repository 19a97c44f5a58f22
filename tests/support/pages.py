"""Read the analytics page's numbers back out of its HTML, as a person reads the tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Cell:
    """A table cell: its text and its machine-readable ``data-value`` (rates)."""

    text: str = ""
    value: str | None = None


@dataclass
class AnalyticsPage:
    """What the page shows: the rule table, the totals, the reasons and the charts."""

    rules: dict[str, dict[str, Cell]] = field(default_factory=dict)
    totals: dict[str, Cell] = field(default_factory=dict)
    reasons: list[tuple[str, str, int]] = field(default_factory=list)  # rule, code, count
    bars: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # rule -> (day, n)
    rate_points: dict[str, int] = field(default_factory=dict)
    since: str | None = None
    title: str = ""


class _Parser(HTMLParser):
    """Collect cells marked with ``data-field`` inside the tables and tiles we know."""

    def __init__(self) -> None:
        super().__init__()
        self.page = AnalyticsPage()
        self._table: str | None = None
        self._rule: str | None = None
        self._reason_code: str | None = None
        self._cell: Cell | None = None
        self._chart_rule: str | None = None
        self._in_totals = False
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "title":
            self._in_title = True
        if tag == "table":
            self._table = a.get("id")
        if a.get("id") in ("totals", "charts"):
            self._in_totals = a.get("id") == "totals"
        if a.get("id") == "window-since":
            self.page.since = a.get("data-since") or None
        if tag == "tr" and self._table in ("rules", "reasons") and "data-rule-id" in a:
            self._rule = a["data-rule-id"]
            self._reason_code = a.get("data-code")
            if self._table == "rules":
                self.page.rules[self._rule or ""] = {}
        if tag == "div" and "rule-chart" in (a.get("class") or "").split():
            self._chart_rule = a.get("data-rule-id")
            self.page.bars[self._chart_rule or ""] = []
            self.page.rate_points[self._chart_rule or ""] = 0
        if tag == "rect" and a.get("class") == "bar" and self._chart_rule is not None:
            bar = (a["data-start"] or "", int(a["data-fired"] or 0))
            self.page.bars[self._chart_rule].append(bar)
        if tag == "circle" and a.get("class") == "rate" and self._chart_rule is not None:
            self.page.rate_points[self._chart_rule] += 1
        if "data-field" in a:
            self._cell = Cell(value=a.get("data-value"))
            name = a["data-field"] or ""
            if self._table == "rules" and self._rule is not None:
                self.page.rules[self._rule][name] = self._cell
            elif self._in_totals:
                self.page.totals[name] = self._cell

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in ("td", "div") and self._cell is not None:
            if self._table == "reasons" and self._rule is not None:
                self.page.reasons.append(
                    (self._rule, self._reason_code or "", int(self._cell.text))
                )
            self._cell = None
        if tag == "tr":
            self._rule = None
        if tag == "table":
            self._table = None
        if tag == "svg":
            self._chart_rule = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.page.title += data
        if self._cell is not None:
            self._cell.text += data.strip()


def parse_analytics_page(html: str) -> AnalyticsPage:
    """Parse the analytics page's HTML (served or as the browser built it)."""
    parser = _Parser()
    parser.feed(html)
    parser.close()
    return parser.page


def percent(value: float | None) -> str:
    """Format a rate the way the page does."""
    return "\N{EN DASH}" if value is None else f"{value * 100:.1f}%"
