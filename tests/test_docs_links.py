"""Every relative link in the README and docs points at a file that exists, and every ``#anchor`` at a heading or an
``<a id>`` of that page: a moved section or a renamed heading fails here rather than as a dead link on GitHub.

Anchors are the ones GitHub makes from a heading: the heading's text lower-cased, markdown code marks and
punctuation other than ``-`` and ``_`` dropped, spaces turned into ``-``; a repeated heading gets ``-1``, ``-2``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")     # images' ![alt](file) too


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())      # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.replace("`", ""))
    return text.replace(" ", "-")


def strip_code(text: str) -> str:
    """The text without fenced code blocks (a ``#`` there is a shell comment, a ``[x](y)`` is code)."""
    return re.sub(r"```.*?```", "", text, flags=re.S)


@lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    text = strip_code(path.read_text())
    seen: dict[str, int] = {}
    out = set(re.findall(r"<a id=\"([^\"]+)\"", text))
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def links(path: Path) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", strip_code(path.read_text()))                # inline code is not a link
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]        # http:, https:, mailto: left out


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def broken(path: Path) -> list[str]:
    """The relative links of ``path`` whose file or anchor does not exist."""
    out = []
    for target in links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            out.append(f"{target}: no file {shown(dest)}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            out.append(f"{target}: no heading or <a id> '{anchor}' in {shown(dest)}")
    return out


def test_slug_follows_github():
    assert slug("The shipped checkpoint: all 8 tasks from any viewpoint (`checkpoints/rig8-ctx-recover-noise-9k`)") \
        == "the-shipped-checkpoint-all-8-tasks-from-any-viewpoint-checkpointsrig8-ctx-recover-noise-9k"
    assert slug("Language and guidance (`text.py`)") == "language-and-guidance-textpy"
    assert slug("Two commands") == "two-commands"
    assert slug("A [link](x.md) in it") == "a-link-in-it"
    assert slug("Its recipe (≤ 60 minutes of training on 2 cores)") == "its-recipe--60-minutes-of-training-on-2-cores"
    assert slug("The four jobs, open loop (the paper's Tables 4–6)") == "the-four-jobs-open-loop-the-papers-tables-46"
    assert slug("Every view of the rig at test time (`--policy-cameras all`)") \
        == "every-view-of-the-rig-at-test-time---policy-cameras-all"


def test_repeated_headings_are_numbered(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A\n## Setup\n```bash\n# not a heading\n```\n## Setup\n<a id=\"here\"></a>x\n")
    assert anchors(page) == {"a", "setup", "setup-1", "here"}


def test_broken_links_are_found(tmp_path):
    (tmp_path / "other.md").write_text("## Real heading\n")
    page = tmp_path / "p.md"
    page.write_text("[ok](other.md#real-heading) [gone](missing.md) [bad](other.md#nope) [self](#top)\n# Top\n"
                    "`[code](nowhere.md)` [web](https://example.org/x#y)\n```\n[block](nowhere.md)\n```\n"
                    "![figure](img/missing.png)\n")
    assert [b.split(":")[0] for b in broken(page)] == ["missing.md", "other.md#nope", "img/missing.png"]


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_doc_links_resolve(path):
    assert broken(path) == []
