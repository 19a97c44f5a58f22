"""Print for a person at a terminal: cards as a clinician scans them, violations, progress.

Progress goes to stderr (``--quiet`` silences it); cards go to stdout, coloured only on a
terminal that wants colour (``NO_COLOR``, ``TERM=dumb``).
"""

from __future__ import annotations

import os
import re
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import IO, Any

from cds_service.spec_check import Violation

SLOW_AFTER_S = 1.0


class Progress:
    """Report each slow step on stderr, so a hung FHIR server is visible rather than silent."""

    def __init__(self, stream: IO[str], *, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self._lock = threading.Lock()

    def say(self, message: str) -> None:
        """Print one progress line, unless ``--quiet``."""
        if self.enabled:
            with self._lock:
                print(message, file=self.stream, flush=True)

    @contextmanager
    def step(self, label: str) -> Iterator[dict[str, str]]:
        """Time one request; say "still waiting" every ``SLOW_AFTER_S`` s, then print the result.

        The caller puts the outcome in the yielded dict under ``"result"``.
        """
        outcome: dict[str, str] = {}
        started = time.monotonic()
        finished = threading.Event()

        def nag() -> None:
            while not finished.wait(SLOW_AFTER_S):
                self.say(f"  ... still waiting for {label} ({time.monotonic() - started:.0f} s)")

        watcher = threading.Thread(target=nag, name="cli-progress", daemon=True)
        if self.enabled:
            watcher.start()
        try:
            yield outcome
        finally:
            finished.set()
            if watcher.is_alive():
                watcher.join()
            elapsed = time.monotonic() - started
            self.say(f"  {label}: {outcome.get('result', 'failed')} ({elapsed:.2f} s)")


def color_enabled(stream: IO[str]) -> bool:
    """Colour only a terminal, and only when neither NO_COLOR nor TERM=dumb asks otherwise."""
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


_COLORS = {"critical": "\033[1;31m", "warning": "\033[1;33m", "info": "\033[1;36m"}
_RESET = "\033[0m"


def render_cards(response: Mapping[str, Any], out: IO[str], *, color: bool = False) -> None:
    """Print cards as a clinician would scan them: indicator, summary, detail, suggestions."""
    cards = response.get("cards")
    cards = cards if isinstance(cards, list) else []
    width = max(60, min(100, _terminal_width()))
    if not cards:
        print("No cards: the service has no guidance for this order.", file=out)
    for number, card in enumerate(cards, 1):
        if not isinstance(card, dict):
            continue
        indicator = str(card.get("indicator", "?"))
        label = f"{indicator.upper():<8}"
        if color:
            label = f"{_COLORS.get(indicator, '')}{label}{_RESET}"
        print(f"\n{number}. {label} {card.get('summary', '(no summary)')}", file=out)
        source = card.get("source") if isinstance(card.get("source"), dict) else {}
        if source:
            url = f" <{source['url']}>" if source.get("url") else ""
            print(f"   source: {source.get('label', '?')}{url}", file=out)
        detail = card.get("detail")
        if isinstance(detail, str) and detail:
            print(file=out)
            print(_wrap_markdown(detail, "   ", width) + "\n", file=out)
        _render_suggestions(card, out, width)
        reasons = card.get("overrideReasons")
        if isinstance(reasons, list) and reasons:
            shown = "; ".join(
                str(r.get("display", r.get("code", "?"))) for r in reasons if isinstance(r, dict)
            )
            print(
                textwrap.fill(
                    f"override reasons: {shown}",
                    width,
                    initial_indent="   ",
                    subsequent_indent="     ",
                ),
                file=out,
            )
        for link in card.get("links") or []:
            if isinstance(link, dict):
                print(
                    f"   link: {link.get('label', '?')} <{link.get('url', '?')}> "
                    f"({link.get('type', '?')})",
                    file=out,
                )
    actions = response.get("systemActions")
    if isinstance(actions, list) and actions:
        print("\nsystem actions:", file=out)
        for action in actions:
            if isinstance(action, dict):
                print("   " + _action_line(action), file=out)


def _render_suggestions(card: Mapping[str, Any], out: IO[str], width: int) -> None:
    suggestions = card.get("suggestions")
    if not isinstance(suggestions, list) or not suggestions:
        return
    behavior = card.get("selectionBehavior", "not given")
    print(f"   suggestions (selectionBehavior: {behavior}):", file=out)
    for suggestion in suggestions:
        if not isinstance(suggestion, dict):
            continue
        flag = " [recommended]" if suggestion.get("isRecommended") else ""
        print(f"     - {suggestion.get('label', '?')}{flag}", file=out)
        for action in suggestion.get("actions") or []:
            if isinstance(action, dict):
                print(
                    textwrap.fill(
                        _action_line(action),
                        width,
                        initial_indent="         ",
                        subsequent_indent="           ",
                    ),
                    file=out,
                )


def _action_line(action: Mapping[str, Any]) -> str:
    resource = action.get("resource")
    target = action.get("resourceId")
    if target is None and isinstance(resource, dict):
        target = f"{resource.get('resourceType', '?')}/{resource.get('id', '(new)')}"
    return f"{action.get('type', '?')} {target or ''}: {action.get('description', '')}".strip()


def _wrap_markdown(text: str, indent: str, width: int) -> str:
    """Wrap GitHub-flavoured Markdown for a terminal, keeping list items and blank lines."""
    lines = []
    for line in text.splitlines():
        if not line.strip():
            lines.append("")
            continue
        stripped = line.lstrip()
        if stripped.startswith("|"):  # a table row: wrapping would break its columns
            lines.append(indent + line)
            continue
        lead = line[: len(line) - len(stripped)]
        bullet = re.match(r"([-*+]|\d+\.)\s+", stripped)
        hang = " " * len(bullet.group(0)) if bullet else ""
        lines.append(
            textwrap.fill(
                stripped,
                width,
                initial_indent=indent + lead,
                subsequent_indent=indent + lead + hang,
                break_on_hyphens=False,
                break_long_words=False,
            )
        )
    return "\n".join(lines)


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 100


def print_violations(violations: Sequence[Violation], out: IO[str], prefix: str = "") -> None:
    """Print one checker violation per line: severity, path, message."""
    for violation in violations:
        print(f"{prefix}{violation}", file=out)
