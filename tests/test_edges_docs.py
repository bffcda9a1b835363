"""Docs and docstrings cite no file that is not in the repository (issue 13).

Scans README.md, docs/*.md and src/**/*.py for:

* repository-relative paths (``docs/x.md``, ``src/mrkit/...py``, ``examples/...``, ``benchmarks/...``,
  ``scripts/...``, ``tests/...``, ``requirements/...``, ``.ci/...``; globs allowed);
* package-relative module paths (``coordination/plan.py``, as docs/internals.md writes them), which
  must exist under ``src/mrkit/``;
* capitalised documents (``DESIGN.md``, ``CHANGELOG.md``) and relative Markdown links, which must exist.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "mrkit"

_REPO_PATH = re.compile(
    r"(?<![\w./:~-])((?:docs|src|examples|benchmarks|scripts|tests|requirements|\.ci)/[\w./*-]*[\w*/])"
)
_MODULE_PATH = re.compile(
    r"(?<![\w./:~-])((?:cli|coordination|data|execution|model|storage|worker)/\w+\.py)\b"
)
_DOCUMENT = re.compile(r"(?<![\w./:~-])([A-Z][A-Z_]+\.md)\b")
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _sources() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(PACKAGE.rglob("*.py"))]


def _exists(base: Path, path: str) -> bool:
    path = path.rstrip("/.")
    if any(ch in path for ch in "*?["):
        return any(base.glob(path))
    return (base / path).exists()


def missing_citations() -> list[str]:
    """``file:line: path`` for every cited path that does not exist."""
    missing = []
    for source in _sources():
        for lineno, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            cited = [(ROOT, m) for m in _REPO_PATH.findall(line)]
            cited += [(PACKAGE, m) for m in _MODULE_PATH.findall(line)]
            cited += [(ROOT, m) for m in _DOCUMENT.findall(line) if not (ROOT / "docs" / m).exists()]
            if source.suffix == ".md":
                cited += [(source.parent, m) for m in _LINK.findall(line) if "://" not in m]
            for base, path in cited:
                if not _exists(base, path):
                    missing.append(f"{source.relative_to(ROOT)}:{lineno}: {path}")
    return missing


def test_docs_and_docstrings_cite_only_files_in_the_repository() -> None:
    missing = missing_citations()
    assert not missing, "cited but not in the repository:\n" + "\n".join(missing)


def test_the_scan_finds_a_missing_file(tmp_path: Path) -> None:
    # The patterns themselves: a citation of each kind is recognised.
    line = "see docs/nowhere.md, coordination/nothing.py, DESIGN.md and [x](other.md)"
    assert _REPO_PATH.findall(line) == ["docs/nowhere.md"]
    assert _MODULE_PATH.findall(line) == ["coordination/nothing.py"]
    assert _DOCUMENT.findall(line) == ["DESIGN.md"]
    assert _LINK.findall(line) == ["other.md"]
    assert not _exists(ROOT, "docs/nowhere.md") and _exists(ROOT, "docs/*.md")
