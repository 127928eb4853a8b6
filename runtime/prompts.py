"""The prompt language as AUTOMATIC1111's web UI reads it: attention, prompt editing, extra-network tags.

Three independent readers, each following the rules of AUTOMATIC1111's modules/prompt_parser.py and
modules/extra_networks.py (reimplemented here, without lark):

- `parse_prompt_attention`: `(text)`, `[text]`, `(text:1.5)`, escapes and `BREAK` -> [(text, weight)].
- `prompt_schedule`: `[from:to:when]`, `[to:when]`, `[from::when]`, `[a|b]` -> [(end step, plain text)],
  with `schedule_index` to pick the entry for a sampling step.
- `parse_extra_networks`: `<lora:NAME:WEIGHT>` tags -> (prompt without them, [(kind, name, weight)]).

Where sdlite departs from AUTOMATIC1111:
- a number that is not finite (`(a:inf)`, `(a:1e999)`, `[a:b:1e999]`) raises a ValueError instead of
  being read as text or crashing;
- a group directly followed by stray brackets or colons (`[a:b:3]::`) is always read as the group;
  AUTOMATIC1111's lark picks a reading by its internal order, which changes with the lark version and,
  with the lark it pins (1.1.2), with Python's hash seed;
- groups nested deeper than 200 levels stay text (lark's recursion fails near 300).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import NamedTuple

__all__ = [
    "WEIGHTED_NETWORKS",
    "ExtraNetwork",
    "parse_extra_networks",
    "parse_prompt_attention",
    "prompt_schedule",
    "schedule_index",
]

_UP = 1.1  # `(text)` multiplies attention by 1.1 and `[text]` divides it, as in AUTOMATIC1111

# One alternative per token, in AUTOMATIC1111's order: escapes, openers, an explicit `:weight)`, a
# number-like `:weight)` AUTOMATIC1111 would not read as a weight (only checked to refuse non-finite
# ones), closers, plain text, then a lone colon.
_ATTENTION_TOKEN = re.compile(
    r"""
    \\[()\[\]\\]? |
    [(\[] |
    :\s*(?P<weight>[+-]?[.\d]+)\s*\) |
    :\s*(?P<odd>[+-]?(?:nan|inf(?:inity)?|[.\d]*e[+-]?\d+))\s*\) |
    [)\]] |
    [^\\()\[\]:]+ |
    :
    """,
    re.X | re.I,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_FINITE_RULE = "a weight must be a finite number, such as 1.3 or 0.8"


def _weight(token: str, field: str) -> float:
    """The value of an explicit `:weight)`, refusing what is not a finite number."""
    try:
        value = float(token)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"{field}: the weight {token!r} is not a finite number; {_FINITE_RULE}")
    return value


def _refuse_infinite(token: str, field: str) -> None:
    """Refuse a number AUTOMATIC1111 reads as text (nan, inf, 1e999) when it is not finite."""
    try:
        value = float(token)
    except ValueError:
        return  # not a number at all (`e5`): text
    if not math.isfinite(value):
        _weight(token, field)


def _merge(pieces: list[list]) -> list[tuple[str, float]]:
    """Join neighbours of equal weight (BREAK markers included, as AUTOMATIC1111 does)."""
    out: list[list] = []
    for piece in pieces:
        if out and out[-1][1] == piece[1]:
            out[-1][0] += piece[0]
        else:
            out.append(list(piece))
    return [(text, weight) for text, weight in out]


class _Attention:
    """parse_prompt_attention's state: the pieces so far and where each open bracket started."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.pieces: list[list] = []
        self.rounds: list[int] = []
        self.squares: list[int] = []

    def scale(self, start: int, factor: float) -> None:
        for piece in self.pieces[start:]:
            piece[1] *= factor

    def read(self, match: re.Match) -> None:
        token, weight, odd = match.group(0), match.group("weight"), match.group("odd")
        if token.startswith("\\"):
            self.pieces.append([token[1:], 1.0])
        elif token == "(" or token == "[":
            (self.rounds if token == "(" else self.squares).append(len(self.pieces))
        elif self.rounds and (weight is not None or odd is not None or token == ")"):
            self.close_round(token, weight, odd)
        elif token == "]" and self.squares:
            self.scale(self.squares.pop(), 1 / _UP)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i:
                    self.pieces.append(["BREAK", -1.0])
                self.pieces.append([part, 1.0])

    def close_round(self, token: str, weight: str | None, odd: str | None) -> None:
        start = self.rounds.pop()
        if weight is not None:
            self.scale(start, _weight(weight, self.field))
            return
        if odd is not None:
            _refuse_infinite(odd, self.field)  # a finite one is text, as AUTOMATIC1111 reads it
            self.pieces.append([token[:-1], 1.0])
        self.scale(start, _UP)

    def finish(self) -> list[tuple[str, float]]:
        for start in self.rounds:
            self.scale(start, _UP)
        for start in self.squares:
            self.scale(start, 1 / _UP)
        for piece_text, piece_weight in self.pieces:
            if not math.isfinite(piece_weight):
                raise ValueError(
                    f"{self.field}: the weights around {piece_text!r} multiply past the float range; "
                    f"{_FINITE_RULE}, and nested weights multiply"
                )
        return _merge(self.pieces) if self.pieces else [("", 1.0)]


def parse_prompt_attention(text: str, *, field: str = "prompt") -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) pieces by AUTOMATIC1111's attention rules.

    `(a)` x1.1, `[a]` /1.1, `(a:1.5)` x1.5, nesting multiplies, brackets left open close at the end,
    `\\(` `\\)` `\\[` `\\]` `\\\\` are literals, neighbours of equal weight merge, and a standalone `BREAK`
    gives the marker ("BREAK", -1.0). `field` names the prompt in the error for a non-finite weight.
    """
    state = _Attention(field)
    for match in _ATTENTION_TOKEN.finditer(text):
        state.read(match)
    return state.finish()


# Prompt editing. The parse tree is made of plain tuples:
#   str                             text, kept as written (escapes included)
#   ("edit", before, after, when)   [before:after:when]; before is None for [after:when]
#   ("alt", [option, ...])          [a|b|c]
#   list                            a sequence of the above
# A parse function takes (text, pos, depth) and returns (node, new pos), or None where the rule does not
# match. Groups nested deeper than _MAX_DEPTH do not match (their brackets stay text, as unbalanced ones
# do): Python's recursion limit, not the prompt, would end the parse otherwise (lark's ends near 300).
_MAX_DEPTH = 200

# `.` leaves out newlines: a backslash before one is outside the grammar, as in AUTOMATIC1111's lark grammar.
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
_SPACE = re.compile(r"\s+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")  # lark's: ASCII digits


def _sequence(text: str, pos: int, depth: int) -> tuple[list, int]:
    """A run of plain text, spaces and bracketed groups, up to a character that ends it."""
    items: list = []
    while pos < len(text):
        found = _PLAIN.match(text, pos) or _SPACE.match(text, pos)
        if found:
            items.append(found.group(0))
            pos = found.end()
            continue
        group = _group(text, pos, depth + 1) if depth < _MAX_DEPTH else None
        if group is None:
            break
        items.append(group[0])
        pos = group[1]
    return items, pos


def _group(text: str, pos: int, depth: int) -> tuple[object, int] | None:
    """A bracketed group at pos: emphasis `(a)` `(a:b)` `[a]`, an edit `[a:b:when]` or alternation `[a|b]`."""
    if text.startswith("(", pos):
        inner, end = _sequence(text, pos + 1, depth)
        if text.startswith(":", end):
            more, end = _sequence(text, end + 1, depth)
            inner = [*inner, ":", *more]
        return (["(", *inner, ")"], end + 1) if text.startswith(")", end) else None
    if not text.startswith("[", pos):
        return None
    first, end = _sequence(text, pos + 1, depth)
    if text.startswith("]", end):
        return ["[", *first, "]"], end + 1
    if text.startswith("|", end):
        return _alternation(text, end, first, depth)
    if text.startswith(":", end):
        return _edit(text, end + 1, first, depth)
    return None


def _alternation(text: str, pos: int, first: list, depth: int) -> tuple[object, int] | None:
    """The rest of `[a|b|...]` from the first `|` at pos."""
    options = [first]
    while text.startswith("|", pos):
        option, pos = _sequence(text, pos + 1, depth)
        options.append(option)
    return (("alt", options), pos + 1) if text.startswith("]", pos) else None


def _edit(text: str, pos: int, first: list, depth: int) -> tuple[object, int] | None:
    """The rest of `[after:when]` or `[before:after:when]` from just past the first colon."""
    when = _when_end(text, pos)
    if when is not None:
        return ("edit", None, first, when[0]), when[1]
    after, end = _sequence(text, pos, depth)
    if not text.startswith(":", end):
        return None
    when = _when_end(text, end + 1)
    return None if when is None else (("edit", first, after, when[0]), when[1])


def _when_end(text: str, pos: int) -> tuple[str, int] | None:
    """`when]`, spaces allowed around the number: (number as written, position past the bracket)."""
    pos = _skip_space(text, pos)
    number = _NUMBER.match(text, pos)
    if number is None:
        return None
    end = _skip_space(text, number.end())
    return (number.group(0), end + 1) if text.startswith("]", end) else None


def _skip_space(text: str, pos: int) -> int:
    space = _SPACE.match(text, pos)
    return space.end() if space else pos


def _parse_schedule(text: str) -> list | None:
    """The whole prompt: groups and text, with brackets that fit no group kept as text; None if unparsable."""
    items, pos = _sequence(text, 0, 0)
    while pos < len(text):
        if text[pos] not in "[]():":
            return None  # a `|` outside [a|b] or a backslash ending a line: AUTOMATIC1111 keeps the text
        items.append(text[pos])
        more, pos = _sequence(text, pos + 1, 0)
        items.extend(more)
    return items


def _end_step(number: str, steps: int, old_scheduling: bool, field: str) -> int:
    """The last step of `from` in [from:to:when], as AUTOMATIC1111 rounds it (truncated, capped at steps)."""
    value = float(number)
    if not math.isfinite(value):
        raise ValueError(
            f"{field}: the step {number!r} in [from:to:when] is not a finite number; when must "
            "be a fraction of the steps, such as 0.4, or a step number, such as 10"
        )
    if old_scheduling:
        value = value * steps if value < 1 else value
    elif "." in number:
        value = value * steps  # a decimal is always a fraction, even 1.5 (AUTOMATIC1111 since 1.6)
    return min(steps, int(value))


def _steps_of(node: object, steps: int, ends: set[int], when: Callable[[str], int]) -> None:
    """Collect the steps at which the text may change: every edit's end, and every step for an alternation."""
    if isinstance(node, list):
        for child in node:
            _steps_of(child, steps, ends, when)
    elif isinstance(node, tuple) and node[0] == "edit":
        end = when(node[3])
        if end >= 1:
            ends.add(end)
        _steps_of([node[1] or [], node[2]], steps, ends, when)
    elif isinstance(node, tuple):
        ends.update(range(1, steps + 1))
        _steps_of(node[1], steps, ends, when)


def _text_at(node: object, step: int, when: Callable[[str], int]) -> str:
    """The plain text of the tree at one step."""
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return "".join(_text_at(child, step, when) for child in node)
    if node[0] == "edit":
        return _text_at((node[1] or []) if step <= when(node[3]) else node[2], step, when)
    options = node[1]
    return _text_at(options[(step - 1) % len(options)], step, when)


def prompt_schedule(
    text: str, steps: int, *, old_scheduling: bool = False, field: str = "prompt"
) -> list[tuple[int, str]]:
    """The prompt's texts over the steps, as AUTOMATIC1111's get_learned_conditioning_prompt_schedules.

    Each entry is (end step, text for the steps up to it); the texts keep attention syntax for
    `parse_prompt_attention`. `[from:to:when]`: an integer `when` is a step, a decimal one a fraction of
    the steps (`old_scheduling=True`: anything below 1 a fraction, else a step); `[a|b]` alternates every
    step. A prompt outside the grammar (a stray `|`) is kept as it is, as AUTOMATIC1111 does.
    """
    if steps < 1:
        raise ValueError(f"steps: {steps} is too few for a prompt schedule; it must be 1 or more")
    tree = _parse_schedule(text)
    if tree is None:
        return [(steps, text)]

    def when(number: str) -> int:
        return _end_step(number, steps, old_scheduling, field)

    ends = {steps}
    _steps_of(tree, steps, ends, when)
    return [(end, _text_at(tree, end, when)) for end in sorted(ends)]


def schedule_index(schedule: list[tuple[int, str]], step: int) -> int:
    """Which entry of `prompt_schedule` applies at a sampling step (0-based, as AUTOMATIC1111 counts it).

    The first entry whose end step is at least `step`, else the first entry (AUTOMATIC1111's fallback).
    """
    for index, (end, _) in enumerate(schedule):
        if step <= end:
            return index
    return 0


# Extra networks: AUTOMATIC1111's `<kind:arg1:arg2...>` tags, read before anything else in the prompt.
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
# The kinds whose second argument AUTOMATIC1111 reads as a weight.
WEIGHTED_NETWORKS = ("lora", "lyco", "hypernet")


class ExtraNetwork(NamedTuple):
    """One `<kind:name:weight>` tag: weight 1.0 when not given, None for a kind sdlite does not weigh."""

    kind: str
    name: str
    weight: float | None


def _network(kind: str, args: str, field: str) -> ExtraNetwork:
    """Name and weight from the tag's arguments: `te=` (named) wins over the second positional argument."""
    items = args.split(":")
    named = dict(item.split("=", 1) for item in items if item.count("=") == 1)
    positional = [item for item in items if item.count("=") != 1]
    name = positional[0] if positional else items[0]
    raw = named.get("te", positional[1] if len(positional) > 1 else None)
    if raw is None:
        return ExtraNetwork(kind, name, 1.0)
    try:
        weight = float(raw)
    except ValueError:
        weight = math.nan
    if math.isfinite(weight):
        return ExtraNetwork(kind, name, weight)
    if kind in WEIGHTED_NETWORKS:
        raise ValueError(
            f"{field}: the weight {raw!r} in <{kind}:{args}> is not a finite number; "
            f"write <{kind}:NAME> or <{kind}:NAME:WEIGHT> with a weight such as 0.8"
        )
    return ExtraNetwork(kind, name, None)


def parse_extra_networks(text: str, *, field: str = "prompt") -> tuple[str, list[ExtraNetwork]]:
    """The prompt with its `<kind:...>` tags removed, and the tags in order, as AUTOMATIC1111 reads them.

    Every tag is removed and reported (`<lora:...>`, `<hypernet:...>` and unknown kinds alike); the caller
    decides what it applies. A weight that is not a finite number is an error for the weighted kinds.
    """
    found: list[ExtraNetwork] = []

    def take(match: re.Match) -> str:
        found.append(_network(match.group(1), match.group(2), field))
        return ""

    return _EXTRA_NETWORK.sub(take, text), found
