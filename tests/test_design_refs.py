"""Citations of the project's documents resolve: every ``docs/<file>.md#anchor`` names a heading.

docs/design.md is the record of the decisions that cross packages; code, scripts and the other
documents cite its sections as ``docs/design.md#<anchor>`` (GitHub's heading anchors). This test
reads every tracked ``.py`` and ``.md`` file and fails, listing file and line, when

* a cited anchor is not a heading of the cited file (a renamed or removed section), or
* a file cites a document that does not live in the repository (the team notes the decisions
  were first written in), or
* fewer than :data:`MIN_DESIGN_REFS` citations of docs/design.md are found (so the test cannot
  pass because the scan found nothing).

Pure Python: no torch, no project import.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DESIGN = "docs/design.md"
#: the tree cites docs/design.md about 60 times; far fewer means the scan is broken.
MIN_DESIGN_REFS = 20

#: ``docs/<file>.md#<anchor>``; the anchor charset is GitHub's slug charset.
REF = re.compile(r"\bdocs/([\w.-]+\.md)#([\w-]+)")
#: documents outside the repository that code and docs once cited (spelt in pieces so that this
#: file does not match itself).
OUTSIDE_DOCS = (
    *(name + ".md" for name in ("contracts", "ossnet-method", "ossnet-reference-details", "deployment-notes",
                                "style-anchors")),
    "shared" + "/docs",
    "../" + "shared",
)

_SKIP_DIRS = {".git", "build", "dist", "node_modules", "__pycache__"}


def _tracked_files() -> list[str]:
    """Repository-relative paths of the tracked ``.py`` and ``.md`` files (a walk without git)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--", "*.py", "*.md"],
            cwd=REPO_ROOT, capture_output=True, check=True, timeout=60,
        ).stdout.decode()
        files = [f for f in out.split("\0") if f]
        if files:
            return sorted(files)
    except (OSError, subprocess.SubprocessError):
        pass
    found = []
    for root, dirs, names in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".venv")
                   and not d.endswith(".egg-info")]
        for name in names:
            if name.endswith((".py", ".md")):
                found.append(Path(root, name).relative_to(REPO_ROOT).as_posix())
    return sorted(found)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading text: lowercase, punctuation dropped, spaces to hyphens.

    Markdown links keep their text and code spans their content, as on the rendered page.
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """The heading anchors of a markdown text (ATX headings outside code fences; repeats get -1, -2)."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    fence: str | None = None
    for line in markdown.splitlines():
        stripped = line.lstrip()
        marker = re.match(r"(`{3,}|~{3,})", stripped)
        if marker:
            if fence is None:
                fence = marker.group(1)[0] * 3
            elif stripped.startswith(fence):
                fence = None
            continue
        if fence is not None or line.startswith("    "):
            continue
        heading = re.match(r"#{1,6}[ \t]+(.*?)[ \t#]*$", stripped)
        if heading is None:
            continue
        base = slug(heading.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def references(files: list[str]) -> Iterator[tuple[str, int, str, str]]:
    """``(path, line number, cited document, anchor)`` of every ``docs/<file>.md#anchor``."""
    for path in files:
        text = (REPO_ROOT / path).read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            for match in REF.finditer(line):
                yield path, number, "docs/" + match.group(1), match.group(2)


def _read_doc(doc: str) -> str:
    return (REPO_ROOT / doc).read_text(encoding="utf-8")


def broken_references(refs: list[tuple[str, int, str, str]],
                      read: Callable[[str], str] = _read_doc) -> list[str]:
    """``"path:line: docs/x.md#anchor (...)"`` for every reference whose anchor does not exist."""
    cache: dict[str, set[str] | None] = {}
    problems = []
    missed: set[str] = set()
    for path, number, doc, anchor in refs:
        if doc not in cache:
            try:
                cache[doc] = anchors(read(doc))
            except FileNotFoundError:
                cache[doc] = None
        known = cache[doc]
        if known is None:
            problems.append(f"{path}:{number}: {doc}#{anchor} (no such file)")
        elif anchor not in known:
            problems.append(f"{path}:{number}: {doc}#{anchor} (no such heading)")
            missed.add(doc)
    for doc in sorted(missed):
        problems.append(f"(the anchors of {doc}: {', '.join(sorted(cache[doc] or ()))})")
    return problems


#: every tracked .py / .md file but this one (whose examples of broken citations are on purpose).
FILES = [f for f in _tracked_files() if f != Path(__file__).resolve().relative_to(REPO_ROOT).as_posix()]
REFS = list(references(FILES))


def test_slug_follows_github() -> None:
    assert slug("Intensities") == "intensities"
    assert slug("Errors and exit codes") == "errors-and-exit-codes"
    assert slug("TensorRT (`--trt`)") == "tensorrt---trt"
    assert slug("Variants (paper Table 1)") == "variants-paper-table-1"
    assert slug("Model IO") == "model-io"
    text = "# Title\n## Setup\n```\n# not a heading\n```\n## Setup\n"
    assert anchors(text) == {"title", "setup", "setup-1"}


def test_a_wrong_anchor_is_reported() -> None:
    doc = "# Design\n## Geometry\n"
    refs = [("a.py", 3, "docs/d.md", "geometry"), ("b.md", 7, "docs/d.md", "geometri"),
            ("c.py", 1, "docs/missing.md", "x")]

    def read(name: str) -> str:
        if name != "docs/d.md":
            raise FileNotFoundError(name)
        return doc

    problems = broken_references(refs, read=read)
    assert problems == [
        "b.md:7: docs/d.md#geometri (no such heading)",
        "c.py:1: docs/missing.md#x (no such file)",
        "(the anchors of docs/d.md: design, geometry)",
    ]


def test_design_is_cited_enough_for_the_scan_to_mean_something() -> None:
    design_refs = [r for r in REFS if r[2] == DESIGN]
    assert len(design_refs) >= MIN_DESIGN_REFS, (
        f"found only {len(design_refs)} citations of {DESIGN} in {len(FILES)} files; the scan is broken"
    )


def test_every_cited_anchor_exists() -> None:
    problems = broken_references(REFS)
    assert not problems, "citations of headings that do not exist:\n" + "\n".join(problems)


def test_no_citation_of_documents_outside_the_repository() -> None:
    problems = []
    for path in FILES:
        text = (REPO_ROOT / path).read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            for name in OUTSIDE_DOCS:
                if name in line:
                    problems.append(f"{path}:{number}: {name}")
    assert not problems, (
        f"these cite documents outside the repository; cite {DESIGN}#<anchor> (or another file "
        "of the repository) instead:\n" + "\n".join(problems)
    )
