#!/usr/bin/env python3
"""Checks every Markdown file of the repository the way GitHub will render it.

Run by `make check-docs` (part of `make test`), or as `scripts/check-markdown.py [DIR]`.
Python 3 standard library only. Walks every `*.md` under the repository root (or DIR),
skipping `.git/` and any `target/` directory, and prints `file:line: problem` for each
failure; exit code 1 when there is one, 0 otherwise.

The rules:

1. Tables. A table is a line with a `|` followed by a delimiter row (`| --- | :-: |`). The
   delimiter row must have as many cells as the header, and so must every body row (the
   rows up to the next blank line or the start of another block: heading, fence, quote,
   list item). Cells are counted as GitHub counts them: every `|` splits a cell, INCLUDING a
   `|` inside a code span (`a|b` in backticks is two cells on GitHub), except a `|` escaped
   as `\\|`, which GitHub shows as `|`, inside code spans too. A row with the wrong count
   renders with a cell lost or an empty one added; a header that does not match its
   delimiter row is not rendered as a table at all.

2. Links stay in the repository. Outside code, nothing may link out: no Markdown link or
   image, reference definition, `<...>` autolink or HTML `href`/`src` whose target has a
   scheme (`https:`, `http:`, `mailto:`, ...) or starts with `//`, and no bare URL that
   GitHub turns into a link by itself (`http://...`, `https://...`, `ftp://...`, `www....`).
   Text inside code spans and fenced code blocks is never a link on GitHub, so it is not
   checked: `http://127.0.0.1:8089` in a command, or `https://verification.didit.me` as a
   setting's value, belongs in backticks. This applies to every Markdown file.

3. Relative links resolve. A link's path (relative to the file, or to the repository root
   when it starts with `/`) must name a file or directory inside the repository, and a
   `#fragment` pointing into a Markdown file must name one of its headings (GitHub's
   anchors: lower case, punctuation dropped, spaces to `-`, `-1`, `-2` for repeats).

4. README.md at the repository root is at most 200 lines: it is the front page; the rest
   belongs in docs/.

Code spans are found per paragraph (a span may run over several lines) and per table row.
Not modelled: indented (four-space) code blocks (use fences), tables inside lists or
quotes, and links whose text or target is split across lines.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 200
SKIP_DIRS = {".git", "target"}

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
DELIMITER_CELL = re.compile(r"^\s*:?-+:?\s*$")
BLOCK_START = re.compile(r"^ {0,3}(#{1,6}(\s|$)|`{3,}|~{3,}|>|[-*+]\s|\d{1,9}[.)]\s)")
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:\s+(.*?))?(?:\s+#+)?\s*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)\s*$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")

INLINE_LINK = re.compile(r"\]\(\s*(<[^>\n]*>|[^)\s]+)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
AUTOLINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]{1,31}:[^<>\s]*)>")
HTML_ATTR = re.compile(r"""\b(?:href|src)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)
BARE_URL = re.compile(r"(?<![\w/])(?:(?:https?|ftp)://|www\.)[^\s<>()\]]+", re.IGNORECASE)


def markdown_files() -> list[Path]:
    found = []
    for directory, subdirs, files in os.walk(ROOT):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS)
        for name in sorted(files):
            if name.endswith(".md"):
                found.append(Path(directory) / name)
    return found


def split_cells(line: str) -> list[str]:
    """A table row's cells as GitHub splits them: on every `|` not escaped by a backslash,
    code spans included; the outer pipes are optional."""
    text = line.strip()
    cells, current, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if c == "|":
            cells.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    trailing_pipe = text.endswith("|") and not text.endswith("\\|")
    if not trailing_pipe:
        cells.append("".join(current))
    if text.startswith("|"):
        cells = cells[1:]
    return cells


def code_spans(line: str) -> list[tuple[int, int]]:
    """(start, end) of each code span of a line, backticks included."""
    spans, i = [], 0
    while i < len(line):
        c = line[i]
        if c == "\\":
            i += 2
            continue
        if c != "`":
            i += 1
            continue
        j = i
        while j < len(line) and line[j] == "`":
            j += 1
        run = j - i
        closing = re.compile(r"(?<!`)`{%d}(?!`)" % run).search(line, j)
        if closing is None:
            i = j  # no closing run: the backticks are literal
            continue
        spans.append((i, closing.end()))
        i = closing.end()
    return spans


def without_code(line: str) -> str:
    """The text with every code span blanked out; same length and line breaks."""
    chars = list(line)
    for start, end in code_spans(line):
        for k in range(start, end):
            if chars[k] != "\n":
                chars[k] = " "
    return "".join(chars)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = text.replace("`", "")
    text = re.sub(r"<[^>]+>", "", text)
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


class Document:
    """One Markdown file: its lines, which of them are inside fenced code, its anchors."""

    def __init__(self, path: Path):
        self.path = path
        self.lines = path.read_text(encoding="utf-8").splitlines()
        self.in_code = []
        fence = None
        for line in self.lines:
            m = FENCE.match(line)
            if fence is None:
                if m:
                    fence = m.group(1)
                    self.in_code.append(True)
                else:
                    self.in_code.append(False)
            else:
                self.in_code.append(True)
                if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                    if line.strip() == m.group(1):
                        fence = None
        self._anchors = None
        self.table_rows: set[int] = set()

    def anchors(self) -> set[str]:
        if self._anchors is None:
            seen: dict[str, int] = {}
            anchors = set()
            for i, line in enumerate(self.lines):
                if self.in_code[i]:
                    continue
                text = None
                m = ATX_HEADING.match(line)
                if m:
                    text = m.group(2) or ""
                elif (
                    i + 1 < len(self.lines)
                    and not self.in_code[i + 1]
                    and line.strip()
                    and not BLOCK_START.match(line)
                    and "|" not in line
                    and SETEXT_UNDERLINE.match(self.lines[i + 1])
                ):
                    text = line
                if text is None:
                    continue
                base = slug(text)
                n = seen.get(base, 0)
                anchors.add(base if n == 0 else f"{base}-{n}")
                seen[base] = n + 1
            self._anchors = anchors
        return self._anchors


class Checker:
    def __init__(self):
        self.problems: list[str] = []
        self.documents: dict[Path, Document] = {}
        self.tables = 0
        self.links = 0

    def document(self, path: Path) -> Document:
        path = path.resolve()
        if path not in self.documents:
            self.documents[path] = Document(path)
        return self.documents[path]

    def problem(self, doc: Document, line_no: int, message: str) -> None:
        self.problems.append(f"{doc.path.relative_to(ROOT)}:{line_no}: {message}")

    def check_file(self, path: Path) -> None:
        doc = self.document(path)
        if path.resolve() == (ROOT / "README.md").resolve() and len(doc.lines) > README_MAX_LINES:
            self.problem(
                doc,
                len(doc.lines),
                f"README.md has {len(doc.lines)} lines, at most {README_MAX_LINES}: move detail to docs/",
            )
        self.check_tables(doc)
        self.check_links(doc)

    def check_tables(self, doc: Document) -> None:
        lines, i = doc.lines, 0
        while i + 1 < len(lines):
            header, delimiter = lines[i], lines[i + 1]
            if (
                doc.in_code[i]
                or doc.in_code[i + 1]
                or "|" not in header
                or "|" not in delimiter and "-" not in delimiter
                or not all(DELIMITER_CELL.match(c) for c in split_cells(delimiter))
                or not delimiter.strip()
            ):
                i += 1
                continue
            self.tables += 1
            doc.table_rows.update((i, i + 1))
            columns = len(split_cells(header))
            delimiter_cells = len(split_cells(delimiter))
            if delimiter_cells != columns:
                self.problem(
                    doc,
                    i + 2,
                    f"the delimiter row has {delimiter_cells} cells, the header {columns}: GitHub renders no table"
                    + hint(header),
                )
            j = i + 2
            while j < len(lines) and lines[j].strip() and not doc.in_code[j] and not BLOCK_START.match(lines[j]):
                doc.table_rows.add(j)
                cells = len(split_cells(lines[j]))
                if cells != columns:
                    self.problem(
                        doc,
                        j + 1,
                        f"table row has {cells} cells, the header {columns}" + hint(lines[j]),
                    )
                j += 1
            i = j

    def prose_lines(self, doc: Document) -> list[str]:
        """Each line with its code spans blanked out. A code span may run over several lines
        of a paragraph, so paragraphs are read whole; a table row is read on its own."""
        out = list(doc.lines)
        i = 0
        while i < len(doc.lines):
            if doc.in_code[i] or not doc.lines[i].strip() or i in doc.table_rows:
                if i in doc.table_rows:
                    out[i] = without_code(doc.lines[i])
                i += 1
                continue
            j = i
            while (
                j < len(doc.lines)
                and doc.lines[j].strip()
                and not doc.in_code[j]
                and j not in doc.table_rows
                and (j == i or not ATX_HEADING.match(doc.lines[j]))
            ):
                j += 1
            out[i:j] = without_code("\n".join(doc.lines[i:j])).split("\n")
            i = j
        return out

    def check_links(self, doc: Document) -> None:
        in_comment = False
        prose_lines = self.prose_lines(doc)
        for i, raw in enumerate(prose_lines):
            if doc.in_code[i]:
                continue
            line = raw
            # HTML comments are not rendered: their text is not a link.
            if in_comment:
                end = line.find("-->")
                if end < 0:
                    continue
                line = " " * (end + 3) + line[end + 3 :]
                in_comment = False
            while "<!--" in line:
                start = line.find("<!--")
                end = line.find("-->", start + 4)
                if end < 0:
                    line = line[:start]
                    in_comment = True
                    break
                line = line[:start] + " " * (end + 3 - start) + line[end + 3 :]
            prose = line
            targets = []
            for pattern in (INLINE_LINK, REFERENCE_DEF, AUTOLINK, HTML_ATTR):
                for m in pattern.finditer(prose):
                    targets.append((m.start(1), m.end(1), m.group(1).strip("<>")))
            for start, end, target in targets:
                self.links += 1
                self.check_target(doc, i + 1, target)
            # Bare URLs: only those not already seen as a link's target.
            covered = [(s, e) for s, e, _ in targets]
            for m in BARE_URL.finditer(prose):
                if any(s <= m.start() < e for s, e in covered):
                    continue
                self.problem(
                    doc,
                    i + 1,
                    f"bare URL {m.group(0)} becomes a link out of the repository on GitHub"
                    " (put a value or a command in backticks, or drop it)",
                )

    def check_target(self, doc: Document, line_no: int, target: str) -> None:
        if SCHEME.match(target) or target.startswith("//"):
            self.problem(doc, line_no, f"link to {target} leaves the repository")
            return
        path_part, _, fragment = target.partition("#")
        path_part = urllib.parse.unquote(path_part.split("?", 1)[0])
        if path_part == "":
            resolved = doc.path.resolve()
        elif path_part.startswith("/"):
            resolved = (ROOT / path_part.lstrip("/")).resolve()
        else:
            resolved = (doc.path.parent / path_part).resolve()
        if resolved != ROOT and ROOT not in resolved.parents:
            self.problem(doc, line_no, f"link to {target} leaves the repository")
            return
        if not resolved.exists():
            self.problem(doc, line_no, f"link to {target}: {resolved.relative_to(ROOT)} does not exist")
            return
        if fragment and resolved.is_file() and resolved.suffix == ".md":
            anchor = urllib.parse.unquote(fragment).lower()
            if anchor not in self.document(resolved).anchors():
                self.problem(
                    doc,
                    line_no,
                    f"link to {target}: no heading of {resolved.relative_to(ROOT)} has the anchor #{anchor}",
                )


def hint(row: str) -> str:
    for start, end in code_spans(row):
        if re.search(r"(?<!\\)\|", row[start:end]):
            return " (a | inside backticks still splits the cell on GitHub: write \\|)"
    return ""


def main() -> int:
    global ROOT
    if len(sys.argv) > 1:  # another tree, e.g. to try the rules on a few files
        ROOT = Path(sys.argv[1]).resolve()
    checker = Checker()
    files = markdown_files()
    for path in files:
        checker.check_file(path)
    for problem in checker.problems:
        print(problem)
    if checker.problems:
        print(f"check-markdown: {len(checker.problems)} problem(s) in {len(files)} Markdown files", file=sys.stderr)
        return 1
    print(f"check-markdown: {len(files)} files, {checker.tables} tables, {checker.links} links: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
