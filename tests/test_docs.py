"""The documentation cannot drift from the code unnoticed.

- docs/cli.md is generated from the parsers (scripts/cli_reference.py): a flag changed without
  regenerating it fails here;
- README.md stays a front door (at most 250 lines);
- every relative link of README.md and docs/*.md points at a file that exists, and at a
  heading of it where the link names one.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _generator():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_generated_from_the_parsers():
    generated = _generator().generate()
    current = (ROOT / "docs" / "cli.md").read_text()
    assert current == generated, ("docs/cli.md differs from the parsers' flags: run "
                                  "`python scripts/cli_reference.py` and commit docs/cli.md")


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"


# [text](target) and [text]: target, outside code spans and fenced blocks
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|^\s*\[[^\]]+\]:\s*(\S+)", re.M)


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans (their brackets are code)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (lower case, punctuation dropped, spaces
    to hyphens; a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        slug = "".join(c for c in m.group(1).lower() if c.isalnum() or c in " -_").replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(path: Path):
    for m in LINK.finditer(_prose(path.read_text())):
        target = m.group(1) or m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        yield target


def test_every_relative_link_points_at_something_that_exists():
    broken = []
    checked = 0
    for doc in DOCS:
        for target in _links(doc):
            file_part, _, anchor = target.partition("#")
            dest = (doc.parent / unquote(file_part)).resolve() if file_part else doc
            checked += 1
            if not dest.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert checked > 20  # the pattern finds the links at all
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_module_has_its_line_in_the_package_map():
    """docs/architecture.md names every module of src/trajdistill (a module added or split
    gets its line), and no module that is gone."""
    package = ROOT / "src" / "trajdistill"
    existing = {p.relative_to(package) for p in package.rglob("*.py")}
    # every module must be named; an __init__.py that holds code (cli/) may be too
    modules = {str(p) for p in existing if p.name not in ("__init__.py", "__main__.py")}
    named = set(re.findall(r"^\| `([\w/]+\.py)` \|", (ROOT / "docs" / "architecture.md").read_text(),
                           re.M))
    assert modules - named == set(), "modules missing from docs/architecture.md"
    assert named - {str(p) for p in existing} == set(), "docs/architecture.md names modules that do not exist"
