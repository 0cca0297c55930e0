"""The post's equations as kramdown (GFM input, math engine mathjax) and then MathJax will read them.

- `$$...$$` alone in its block (blank lines around) is display math (kramdown writes `\\[...\\]`);
- `$$...$$` inside a paragraph is inline math (kramdown writes `\\(...\\)`), its TeX kept verbatim;
- single `$...$` is NOT kramdown syntax: it reaches MathJax only after markdown processing, which
  eats backslash escapes (`\\{` -> `{`, `\\\\` -> `\\`) and turns `_..._` / `*...*` into emphasis;
- a `|` on the first line of a paragraph makes the paragraph a table, even inside `$$...$$`.

So the post writes inline math as `$$...$$` with `\\vert` for `|`: `protect_inline_math` does exactly that.
The tests compare `extract_math(markdown)` with what MathJax typeset in the browser (`math_mismatches`).
"""

from __future__ import annotations

import bisect
import dataclasses
import difflib
import re
from typing import Sequence

from browser import MathSpan


@dataclasses.dataclass(frozen=True)
class EquationCount:
    """Equations MathJax should typeset: display blocks and inline spans."""

    display: int
    inline: int

    @property
    def total(self) -> int:
        return self.display + self.inline


@dataclasses.dataclass(frozen=True)
class _Span:
    start: int  # offset of the opening delimiter in the markdown
    end: int    # offset just past the closing delimiter
    tex: str
    display: bool
    single_dollar: bool


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_MASK = "\0"  # stands in for code/comments: not blank, not a delimiter


def _mask(text: str) -> str:
    """`text` with front matter blanked and code/comments replaced by NULs (newlines and offsets kept)."""
    chars = list(text)

    def fill(start: int, end: int, char: str) -> None:
        for i in range(start, end):
            if chars[i] != "\n":
                chars[i] = char

    front = re.match(r"\A---[ \t]*\n.*?^(?:---|\.\.\.)[ \t]*$", text, re.S | re.M)
    if front:
        fill(0, front.end(), " ")
    pos, fence = 0, None
    for line in text.splitlines(keepends=True):
        m = _FENCE.match(line)
        if fence is None and m and not (front and pos < front.end()):
            fence = m.group(1)
            fill(pos, pos + len(line), _MASK)
        elif fence is not None:
            fill(pos, pos + len(line), _MASK)
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line[m.end():].strip():
                fence = None
        pos += len(line)
    masked = "".join(chars)
    for m in re.finditer(r"<!--.*?-->", masked, re.S):
        fill(m.start(), m.end(), _MASK)
    masked = "".join(chars)
    for m in re.finditer(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", masked, re.S):
        fill(m.start(), m.end(), _MASK)
    return "".join(chars)


def _find_single_dollar_end(block: str, i: int) -> int:
    """MathJax's search for the closing `$` of math opened at block[i]: braces balanced, `\\x` skipped."""
    depth, j = 0, i + 1
    while j < len(block):
        c = block[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "$" and depth <= 0:
            return j if j > i + 1 else -1
        elif c == _MASK:
            return -1
        j += 1
    return -1


def _spans(markdown_text: str) -> list[_Span]:
    masked = _mask(markdown_text)
    spans: list[_Span] = []
    for block in re.finditer(r"(?:^[ \t]*\S.*(?:\n|\Z))+", masked, re.M):
        text, base = block.group(0), block.start()
        display = re.fullmatch(r"\s*\$\$(.*?)\$\$\s*", text, re.S)
        if display and "$$" not in display.group(1):
            start = base + text.index("$$")
            end = base + text.rindex("$$") + 2
            spans.append(_Span(start, end, markdown_text[start + 2:end - 2].strip(), True, False))
            continue
        i = 0
        while i < len(text):
            c = text[i]
            if c == "\\":  # kramdown escape (\$ is a literal dollar)
                i += 2
            elif text.startswith("$$", i):  # kramdown math span: verbatim, no escapes inside
                j = text.find("$$", i + 2)
                if j < 0 or _MASK in text[i:j]:
                    i += 2
                    continue
                spans.append(_Span(base + i, base + j + 2, markdown_text[base + i + 2:base + j].strip(), False, False))
                i = j + 2
            elif c == "$":  # not kramdown syntax: reaches MathJax after markdown processing
                j = _find_single_dollar_end(text, i)
                if j < 0:
                    i += 1
                    continue
                spans.append(_Span(base + i, base + j + 1, markdown_text[base + i + 1:base + j].strip(), False, True))
                i = j + 1
            else:
                i += 1
    return spans


def extract_math(markdown_text: str) -> list[MathSpan]:
    """Every equation of a post, in order, as MathJax should find it after Jekyll built the page.

    Display math is a block that is only `$$...$$`; inline math is `$$...$$` inside a block or
    `$...$` (MathJax's rule: braces balanced, `\\$` escaped). Front matter, fenced code, code spans
    and HTML comments are skipped (indented code blocks are not recognised).
    """
    line_starts = [0] + [m.end() for m in re.finditer(r"\n", markdown_text)]
    return [MathSpan(s.tex, s.display, bisect.bisect_right(line_starts, s.start)) for s in _spans(markdown_text)]


def count_equations(markdown_text: str) -> EquationCount:
    """How many display and inline equations MathJax should typeset (compare with `PageReport.math`)."""
    spans = extract_math(markdown_text)
    display = sum(s.display for s in spans)
    return EquationCount(display=display, inline=len(spans) - display)


def _vert(tex: str) -> str:
    return re.sub(r"(?<!\\)\|", r"\\vert ", tex)


def protect_inline_math(markdown_text: str) -> str:
    """Rewrite inline math so kramdown passes it to MathJax verbatim.

    `$x$` becomes `$$x$$` (a kramdown math span: no emphasis, no escape eating), and a bare `|`
    in inline math becomes `\\vert ` (a `|` can turn a paragraph into a table). Display blocks, code
    and already-safe spans are left as they are. Idempotent.
    """
    out, last = [], 0
    for span in _spans(markdown_text):
        if span.display:
            continue
        inner = markdown_text[span.start:span.end].strip("$")
        out.append(markdown_text[last:span.start])
        out.append("$$" + _vert(inner) + "$$")
        last = span.end
    out.append(markdown_text[last:])
    return "".join(out)


def lint_math(markdown_text: str) -> list[str]:
    """Warnings for inline math that kramdown may change before MathJax sees it ("line N: ...")."""
    problems = []
    for span in extract_math(markdown_text):
        if span.display:
            continue
        raw = span.tex
        if re.search(r"(?<!\\)\|", raw):
            problems.append(f"line {span.line}: '|' in inline math can turn the paragraph into a table; "
                            f"use \\vert or \\mid: {raw}")
    for span in _spans(markdown_text):
        if span.single_dollar and re.search(r"[\\_*<`\[~]", span.tex):
            line = markdown_text.count("\n", 0, span.start) + 1
            problems.append(f"line {line}: single-dollar math is parsed as markdown by kramdown "
                            f"(escapes, _ and * change); write $${span.tex}$$")
    return problems


def math_mismatches(expected: Sequence[MathSpan], rendered: Sequence[MathSpan]) -> list[str]:
    """Differences between the post's equations and those MathJax typeset, in order; [] if none."""
    a, b = [s.key() for s in expected], [s.key() for s in rendered]
    out = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            out += [f"in markdown, not typeset: {k}" for k in a[i1:i2]]
            out += [f"typeset, not in markdown: {k}" for k in b[j1:j2]]
    return out
