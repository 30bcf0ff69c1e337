"""The docs hold together: generated pages are current, links land, the README stays short."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GONE = ("USAGE_GUIDE.md", "TRACKING_GUIDE.md")
# Where a mention of a deleted page could hide: every text file the repository keeps.
TEXT_SUFFIXES = {".md", ".py", ".sh", ".txt", ".toml", ".yml", ".yaml", ".cfg", ".example", ""}
SKIPPED_DIRS = {".git", ".venv", "node_modules", ".work", "__pycache__", ".mypy_cache"}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation but `-` and `_`
    dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor of a Markdown page's headings, numbered as GitHub numbers repeats."""
    seen: dict[str, int] = {}
    found = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"#{1,6} (.+)", line)):
            base = slug(match[1])
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    """The targets of the page's Markdown links and images, outside code blocks."""
    targets = []
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code:
            targets += LINK.findall(re.sub(r"`[^`]*`", "", line))
    return targets


def test_generated_pages_are_current() -> None:
    """cli.md, the settings table and the module map are what docs/generate.py writes today."""
    for path, text in _generator().generated().items():
        assert path.read_text() == text, f"{path.name} is stale: run docs/generate.py"


def test_settings_table_has_a_row_for_every_setting_of_env_example() -> None:
    """Each name .env.example sets appears in the table with its default, in file order."""
    generator = _generator()
    example = (ROOT / ".env.example").read_text()
    pairs = re.findall(r"^([A-Z_]+)=(.*)$", example, flags=re.MULTILINE)
    table = generator.settings_table(example)
    names = re.findall(
        r"`([A-Z][A-Z_]+)`", "".join(row.split("|")[1] for row in table.splitlines())
    )
    assert names == [name for name, _ in pairs]
    assert "| `PORT`" not in table and "| `HOST`, `PORT` | `0.0.0.0`, `8888` |" in table
    for name, default in pairs:
        assert f"`{name}`" in table and (f"`{default}`" if default else "(empty)") in table


def test_settings_table_groups_keys_under_their_shared_comment() -> None:
    """A comment over two keys makes one row; a blank line ends a comment without a key."""
    table = _generator().settings_table("# header\n\n# A and B.\nA=1\nB=\n# C | pipe.\nC=x\n")
    assert table.splitlines()[2:] == [
        "| `A`, `B` | `1`, (empty) | A and B. |",
        "| `C` | `x` | C \\| pipe. |",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_lands(page: Path) -> None:
    """Each relative link names a file that exists, and each #anchor a heading of its page."""
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto: are not checked offline
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no such heading")
    assert broken == []


def test_link_checker_sees_a_broken_link_and_a_wrong_anchor(tmp_path: Path) -> None:
    """The checker's parts catch what they are meant to, and skip code."""
    page = tmp_path / "p.md"
    page.write_text(
        "# Top\n\n## Why it's `so`\n\n[a](p.md#why-its-so) [b](gone.md)\n```\n[c](x)\n```\n"
    )
    assert links(page) == ["p.md#why-its-so", "gone.md"]
    assert anchors(page) == {"top", "why-its-so"}
    assert slug("Metadata: the store, and `conversations_metadata.json`") == (
        "metadata-the-store-and-conversations_metadatajson"
    )


def test_readme_fits_in_8_kb() -> None:
    """The front door stays a screen or two: everything else is one page per topic in docs/."""
    assert len((ROOT / "README.md").read_text().encode()) <= 8192


def test_readme_links_every_docs_page() -> None:
    """Each page in docs/ is reachable from the README."""
    linked = {Path(target.partition("#")[0]).name for target in links(ROOT / "README.md")}
    assert {page.name for page in (ROOT / "docs").glob("*.md")} <= linked


def test_no_file_mentions_the_merged_guides() -> None:
    """USAGE_GUIDE.md and TRACKING_GUIDE.md became docs/workflow.md; nothing points at them."""
    assert not any((ROOT / name).exists() for name in GONE)
    mentions = []
    # The repository's files, tracked or new, never what git ignores (caches, the venv).
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for relative in map(Path, filter(None, listed)):
        path = ROOT / relative
        if (
            path.is_file()
            and not SKIPPED_DIRS.intersection(relative.parts)
            and path.suffix in TEXT_SUFFIXES
            and path != Path(__file__).resolve()
        ):
            text = path.read_text(errors="replace")
            mentions += [f"{relative}: {name}" for name in GONE if name in text]
    assert mentions == []
