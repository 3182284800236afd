"""GFM table scanning with byte spans: the part of the tracker reader that knows Markdown.

Tables are found the way GFM (markdown-it) finds them: a header row with a `|`, then a delimiter
row with as many columns; body rows until a blank line or the start of another block. Cells split
on every `|` not preceded by a backslash, also inside code spans; `\\|` reads as `|`. Code fences,
HTML comments and YAML front matter are skipped. One lenient addition, reported by the reader:
pipe rows after a blank line that match the previous table's width are kept as its
`continuation` (people keep appending rows after a stray blank line; reference/CORPUS.md §5).
Spans are absolute offsets into the text, so the writer can splice single cells.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# CommonMark whitespace (markdown-it's mdTrim), not Python's str.strip() set.
WS = "\t\n\x0b\x0c\r \xa0\u1680\u202f\u205f\u3000\u2028\u2029" + "".join(
    chr(c) for c in range(0x2000, 0x200B))


@dataclass(frozen=True)
class Line:
    no: int     # 1-based
    start: int  # offset of the first character
    end: int    # offset of the line ending (or of the end of text)
    text: str   # without the line ending


@dataclass(frozen=True)
class RawRow:
    line: int
    spans: tuple[tuple[int, int], ...]  # absolute [start, end) of each raw cell, padding included
    texts: tuple[str, ...]              # unescaped, trimmed cell text (what markdown-it sees)


@dataclass(frozen=True)
class RawTable:
    header: RawRow
    delimiter: RawRow
    body: tuple[RawRow, ...]          # GFM body rows, section rows included
    continuation: tuple[RawRow, ...]  # lenient: rows after a blank line
    milestone_hint: str | None        # from the nearest heading such as `## M2 · Main`

    @property
    def width(self) -> int:
        return len(self.header.texts)

    @property
    def last_line(self) -> int:
        rows = self.continuation or self.body or (self.delimiter,)
        return rows[-1].line


def split_lines(text: str) -> list[Line]:
    """Lines on \\n, \\r\\n or \\r only (str.splitlines also breaks on U+2028 and friends).
    A leading byte-order mark belongs to no line, so it is never edited or parsed as a cell."""
    lines, pos, no = [], 1 if text.startswith("\ufeff") else 0, 1
    for m in re.finditer(r"\r\n|\r|\n", text):
        lines.append(Line(no, pos, m.start(), text[pos:m.start()]))
        pos, no = m.end(), no + 1
    if pos < len(text):
        lines.append(Line(no, pos, len(text), text[pos:]))
    return lines


def md_trim(s: str) -> str:
    return s.strip(WS)


def _indent(s: str) -> int:
    return len(s) - len(s.lstrip(" \t"))


def unescape(cell: str) -> str:
    return md_trim(cell.replace("\\|", "|"))


# ---- masking: lines that cannot hold a table ----------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


def masked_lines(lines: list[Line]) -> set[int]:
    """Line numbers inside front matter, code fences or HTML comments."""
    masked: set[int] = set()
    i = front_matter_end(lines)
    masked.update(range(1, i + 1))
    while i < len(lines):
        text = lines[i].text
        fence = _FENCE.match(text)
        if fence and not (fence.group(1)[0] == "`" and "`" in fence.group(2)):
            i = _skip_until(lines, i, masked, lambda t, f=fence.group(1): _closes(t, f))
        elif re.match(r"^ {0,3}<!--", text) and "-->" not in text[text.index("<!--") + 4:]:
            i = _skip_until(lines, i, masked, lambda t: "-->" in t)
        else:
            i += 1
    return masked


def front_matter_end(lines: list[Line]) -> int:
    """Lines of a leading YAML block (`---`, `key: value`..., `---`), or 0. The `key:` test keeps
    a file that merely opens with a thematic break from losing everything up to the next one."""
    if not lines or lines[0].text.rstrip() != "---":
        return 0
    first = next((ln.text for ln in lines[1:] if ln.text.strip()), "")
    if not re.match(r"^[A-Za-z_][\w .-]*:(\s|$)", first):
        return 0
    for j in range(1, len(lines)):
        if lines[j].text.rstrip() in ("---", "..."):
            return j + 1
    return 0


def _closes(text: str, opener: str) -> bool:
    m = re.match(r"^ {0,3}(`{3,}|~{3,})[ \t]*$", text)
    return bool(m) and m.group(1)[0] == opener[0] and len(m.group(1)) >= len(opener)


def _skip_until(lines: list[Line], i: int, masked: set[int], closes) -> int:
    masked.add(lines[i].no)
    for j in range(i + 1, len(lines)):
        masked.add(lines[j].no)
        if closes(lines[j].text):
            return j + 1
    return len(lines)


# ---- GFM table scanning -------------------------------------------------------------------

_HTML_BLOCK = re.compile(
    r"^ {0,3}(?:<(?:script|pre|style|textarea)(?:\s|>|$)|<!--|<\?|<![A-Za-z]|<!\[CDATA\[|"
    r"</?(?:address|article|aside|blockquote|body|caption|center|details|dialog|div|dl|dt|dd|"
    r"fieldset|figcaption|figure|footer|form|h[1-6]|head|header|hr|html|iframe|legend|li|main|"
    r"menu|nav|ol|p|section|summary|table|tbody|td|tfoot|th|thead|title|tr|ul)(?:\s|/?>|$))",
    re.IGNORECASE)
_TERMINATORS = (
    re.compile(r"^ {0,3}(?:`{3,}|~{3,})"),                 # fence
    re.compile(r"^ {0,3}>"),                               # blockquote
    re.compile(r"^ {0,3}([*_-])(?:[ \t]*\1){2,}[ \t]*$"),  # thematic break
    re.compile(r"^ {0,3}(?:[-+*]|\d{1,9}[.)])(?:[ \t]|$)"),  # list item
    re.compile(r"^ {0,3}#{1,6}(?:[ \t]|$)"),               # ATX heading
    _HTML_BLOCK,
)


def split_row(line: Line) -> RawRow:
    """Cells the GFM way: trim, split on unescaped pipes, drop empty edge cells."""
    text = line.text
    a = len(text) - len(text.lstrip(WS))
    b = len(md_trim(text)) + a
    pipes = [i for i in range(a, b) if text[i] == "|" and (i == 0 or text[i - 1] != "\\")]
    bounds = [a - 1] + pipes + [b]
    spans = [(bounds[k] + 1, bounds[k + 1]) for k in range(len(bounds) - 1)]
    if spans and spans[0][0] == spans[0][1] and pipes and pipes[0] == a:
        spans.pop(0)
    if spans and spans[-1][0] == spans[-1][1] and pipes and pipes[-1] == b - 1:
        spans.pop()
    texts = tuple(unescape(text[s:e]) for s, e in spans)
    return RawRow(line.no, tuple((line.start + s, line.start + e) for s, e in spans), texts)


def _delimiter_width(text: str) -> int:
    """Column count of a GFM delimiter row, or 0 when the line is not one."""
    body = text.lstrip(" \t")
    if _indent(text) >= 4 or len(body) < 2 or body[0] not in "|-:":
        return 0
    if body[1] not in "|-: \t" or (body[0] == "-" and body[1] in " \t"):
        return 0
    if any(ch not in "|-: \t" for ch in body):
        return 0
    cols = body.split("|")
    count = 0
    for k, col in enumerate(cols):
        t = md_trim(col)
        if not t:
            if k in (0, len(cols) - 1):
                continue
            return 0
        if not re.fullmatch(r":?-+:?", t):
            return 0
        count += 1
    return count


def _is_header(line: Line, below: Line) -> bool:
    width = _delimiter_width(below.text)
    if not width or _indent(line.text) >= 4 or "|" not in md_trim(line.text):
        return False
    return len(split_row(line).texts) == width


def _ends_body(text: str) -> bool:
    return not md_trim(text) or _indent(text) >= 4 or any(t.match(text) for t in _TERMINATORS)


def scan_tables(text: str, lines: list[Line] | None = None) -> list[RawTable]:
    lines = split_lines(text) if lines is None else lines
    masked = masked_lines(lines)
    tables: list[RawTable] = []
    hint: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.no in masked:
            i += 1
            continue
        heading = re.match(r"^ {0,3}#{1,6}[ \t]+(.*)$", line.text)
        if heading:
            found = re.search(r"\b(M\d+[A-Za-z0-9.']*)", heading.group(1))
            hint = found.group(1) if found else None
        if i + 1 < len(lines) and lines[i + 1].no not in masked and _is_header(line, lines[i + 1]):
            table, i = _read_table(lines, i, masked, hint)
            tables.append(table)
        else:
            i += 1
    return tables


def _read_table(lines: list[Line], i: int, masked: set[int], hint: str | None) -> tuple[RawTable, int]:
    header, delim = split_row(lines[i]), split_row(lines[i + 1])
    j = i + 2
    body = []
    while j < len(lines) and lines[j].no not in masked and not _ends_body(lines[j].text):
        body.append(split_row(lines[j]))
        j += 1
    cont: list[RawRow] = []
    while True:
        k = j
        while k < len(lines) and not md_trim(lines[k].text) and lines[k].no not in masked:
            k += 1
        run = _continuation_run(lines, k, masked, len(header.texts))
        if not run:
            break
        cont.extend(run)
        j = k + len(run)
    return RawTable(header, delim, tuple(body), tuple(cont), hint), j


def _continuation_run(lines: list[Line], k: int, masked: set[int], width: int) -> list[RawRow]:
    run: list[RawRow] = []
    while k < len(lines) and lines[k].no not in masked:
        text = lines[k].text
        if not md_trim(text).startswith("|") or _ends_body(text):
            break
        if k + 1 < len(lines) and _is_header(lines[k], lines[k + 1]):
            break
        row = split_row(lines[k])
        if not run and len(row.texts) != width:
            break
        run.append(row)
        k += 1
    return run


