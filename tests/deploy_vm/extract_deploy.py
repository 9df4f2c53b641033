"""The install steps of docs/DEPLOY.md as one bash script: its ```bash deploy``` blocks, in document order.

The deploy tier (tests/deploy_vm) runs exactly these commands in its guest, so the document and the test cannot
drift: a step the document drops, renames or breaks is a step the tier no longer runs, or a failing one.

    python3 extract_deploy.py docs/DEPLOY.md                 # the script (bash), one section per block
    python3 extract_deploy.py docs/DEPLOY.md --apt-packages  # packages its `apt install` lines name, one a line

Standard library only: it runs on the host's system python (setup.sh) as well as the project's venv (tests).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

INFO_STRING = "bash deploy"  # the fence's info string, exactly (CommonMark: the words after the opening fence)

# An opening or closing fence: up to any indentation (blocks inside list items are indented), then 3 or more
# backticks or tildes. CommonMark allows at most 3 spaces outside a list; the documents here indent list-item
# blocks by 4, and a stray deeper fence is still a fence to a reader, so any indentation counts.
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


class ExtractError(ValueError):
    """The document has no deploy block, or a deploy block is never closed."""


@dataclass(frozen=True)
class Block:
    """One ```bash deploy``` block: the 1-based line of its opening fence and its text, indentation removed."""

    line: int
    text: str


def deploy_blocks(markdown: str) -> list[Block]:
    """Every fenced block whose info string is exactly ``bash deploy``, in document order."""
    blocks: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None or (m["fence"][0] == "`" and "`" in m["info"]):  # a backtick info string: inline code
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = _FENCE.match(lines[i])
            # Closed by the same character, at least as long, with nothing after it (CommonMark).
            if close and close["fence"][0] == fence[0] and len(close["fence"]) >= len(fence) \
                    and not close["info"].strip():
                break
            # Content lines lose the opening fence's indentation (and no more), as CommonMark does.
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip(" \t"))
            i += 1
        else:
            if info == INFO_STRING:
                raise ExtractError(f"line {start + 1}: the ```{INFO_STRING} block is never closed")
        i += 1  # past the closing fence
        if info == INFO_STRING:
            blocks.append(Block(start + 1, "\n".join(body)))
    return blocks


def script(markdown: str, source: str = "docs/DEPLOY.md") -> str:
    """The deploy blocks as one bash script; each block starts with a line naming where it comes from."""
    blocks = deploy_blocks(markdown)
    if not blocks:
        raise ExtractError(f"no ```{INFO_STRING} blocks in {source}")
    parts = ["#!/bin/bash", f"# Generated from {source} by tests/deploy_vm/extract_deploy.py: do not edit."]
    for n, block in enumerate(blocks, 1):
        # The marker line is echoed, so a failing command's output is preceded by the block it belongs to.
        parts.append(f"echo {shlex.quote(f'===== deploy block {n}/{len(blocks)} ({source} line {block.line})')}")
        parts.append(block.text)
    return "\n".join(parts) + "\n"


def apt_packages(markdown: str) -> list[str]:
    """The packages named by `apt install` / `apt-get install` commands in the deploy blocks, first mention first."""
    packages: list[str] = []
    for block in deploy_blocks(markdown):
        for command in _commands(block.text):
            words = command[1:] if command[:1] == ["sudo"] else command
            if len(words) < 2 or words[0] not in ("apt", "apt-get") or "install" not in words[1:]:
                continue
            after = words[words.index("install") + 1:]
            for word in after:
                if not word.startswith("-") and word not in packages:
                    packages.append(word)
    return packages


def _commands(text: str) -> list[list[str]]:
    """The simple commands of a block's text, split on newlines, `;`, `&&` and `||` (enough for apt lines)."""
    commands: list[list[str]] = []
    joined = re.sub(r"\\\n", " ", text)  # continuation lines
    for line in joined.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue  # a line of a here-document or a multi-line string: not an apt command
        current: list[str] = []
        for word in words:
            if word in (";", "&&", "||"):
                commands.append(current)
                current = []
            else:
                current.append(word)
        commands.append(current)
    return [c for c in commands if c]


def main(argv: list[str] | None = None) -> int:
    """CLI: print the script, or the apt packages; exit 1 with one line when the document has no deploy block."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("document", type=Path)
    parser.add_argument("--apt-packages", action="store_true", help="print the packages `apt install` lines name")
    args = parser.parse_args(argv)
    text = args.document.read_text(encoding="utf-8")
    try:
        out = "\n".join(apt_packages(text)) + "\n" if args.apt_packages else script(text, str(args.document))
        if args.apt_packages:
            script(text, str(args.document))  # the same "no blocks" check
    except ExtractError as exc:
        print(f"extract_deploy: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
