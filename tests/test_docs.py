"""The documents stay one set (issue 29): no paragraph of more than three lines in two places, and
every measured figure in the evidence sits in a section that names the command that printed it."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND = re.compile(r"python -m bench\.\w+|\bmetaemg-\w+|\bmyhand-controller\b|\bpytest\b|\bmake \w+|bash \.ci/run")


def test_no_paragraph_of_more_than_three_lines_is_in_two_places():
    where = defaultdict(list)
    for doc in DOCUMENTS:
        for block in re.split(r"\n\s*\n", doc.read_text(encoding="utf-8")):
            if len([line for line in block.splitlines() if line.strip()]) > 3:
                where[" ".join(block.split())].append(doc.relative_to(REPO).as_posix())
    twice = {text[:80]: files for text, files in where.items() if len(files) > 1}
    assert twice == {}, twice


def sections(text: str) -> list[tuple[str, str]]:
    """``(heading, body)`` of every heading's section (to the next heading of any level)."""
    parts = re.split(r"^(#{1,4} .*)$", text, flags=re.M)
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def measured(body: str) -> bool:
    """A table row or a code block line with a decimal figure (0.973, 98 ms): a measurement."""
    figure = re.compile(r"\d+\.\d+|\b\d+ ?(?:ms|us|s|%)\b")
    table = [line for line in body.splitlines() if line.startswith("|") and not set(line) <= set("|-: ")]
    blocks = re.findall(r"```.*?```", body, flags=re.S)
    return any(figure.search(line) for line in table) or any(figure.search(b) for b in blocks)


def test_every_figure_in_the_evidence_names_the_command_that_printed_it():
    text = (REPO / "docs" / "evidence.md").read_text(encoding="utf-8")
    heading, orphans = None, []
    for heading, body in sections(text):
        level = len(heading) - len(heading.lstrip("#"))
        if measured(body) and not COMMAND.search(heading + body):
            # a subsection may rely on its section's command
            parent = next(
                (
                    h + b
                    for h, b in reversed(sections(text[: text.index(heading)]))
                    if len(h) - len(h.lstrip("#")) < level
                ),
                "",
            )
            if not COMMAND.search(parent):
                orphans.append(heading)
    assert orphans == [], orphans


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown file (outside code blocks)."""
    out: set[str] = set()
    seen: dict[str, int] = defaultdict(int)
    fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        if fence or not re.match(r"#{1,6} ", line):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        out.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return out


def test_every_link_between_the_documents_resolves():
    broken = []
    for doc in DOCUMENTS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            path = doc if not file else (doc.parent / file).resolve()
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
                broken.append(f"{doc.relative_to(REPO)}: {target}")
    assert broken == [], broken
