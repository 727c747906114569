"""The code blocks of the project's Markdown documents, for tests that run them as written."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(document: str, section: str) -> list[str]:
    """The ```python blocks under the heading ``section`` of ``document`` (a path from
    the repository root), up to the next heading of the same or a higher level."""
    blocks: list[str] = []
    level = 0  # of the section's heading once found
    block: list[str] | None = None  # lines of the python block being read
    fenced = False
    for line in (ROOT / document).read_text(encoding="utf-8").splitlines(keepends=True):
        if line.startswith("```"):
            if block is not None:
                blocks.append("".join(block))
                block = None
            elif level and line.strip() == "```python":
                block = []
            fenced = not fenced
        elif block is not None:
            block.append(line)
        elif not fenced and line.startswith("#"):
            depth = len(line) - len(line.lstrip("#"))
            if level and depth <= level:
                break
            if line[depth:].strip() == section:
                level = depth
    assert level, f"{document} has no section {section!r}"
    assert blocks, f"the section {section!r} of {document} has no python block"
    return blocks
