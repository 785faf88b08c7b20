"""Every ``action-images`` command the README and docs show parses with today's CLI: a renamed or removed flag
fails here rather than in a user's terminal.

Commands come from fenced code blocks (shell line continuations joined as the shell joins them) and from inline
code spans. Placeholder notation is read the way a reader reads it: ``[--flag X]`` is optional and dropped,
``a|b|c`` and ``{a | b | c}`` mean one of them (the first is checked), and a command that leaves out required flags or ends in
``...`` is a mention, not a full command (every flag is made optional for the check), so only flags that do not
exist, unknown sub-commands and choices and malformed values count as errors.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from action_images.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def doc_commands(text: str) -> list[str]:
    """The ``action-images ...`` commands in a markdown text: code-block lines and inline code spans."""
    text = re.sub(r"\\\n\s*", "", text)            # the shell drops backslash-newline and nothing else
    found = []
    for block in re.finditer(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.group(1).splitlines():
            line = re.sub(r"^\$ ", "", line.split(" #")[0].strip())
            if line.startswith("action-images "):
                found.append(line)
    found += re.findall(r"`(action-images [^`]+)`", text)
    return found


def lenient_parser() -> argparse.ArgumentParser:
    """The CLI's parser with every flag optional, so that a mention that leaves out required flags is still checked
    for flags that do not exist (argparse reports missing required flags first and stops)."""
    parser = build_parser()
    stack = [parser]
    while stack:
        for action in stack.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif action.option_strings:
                action.required = False
    return parser


PARSER = lenient_parser()


def parse_error(command: str) -> str:
    """The parser's complaint about ``command`` that a reader would call a wrong command ('' when it parses, or
    when it only leaves out required flags as a mention does)."""
    command = re.sub(r"\{([^{}|]*)\|[^{}]*\}", r"\1", command)        # {a | b | c}: one of them, the first
    command = re.split(r" && | \| |; ", re.sub(r"\[[^\]]*\]", "", command))[0]
    argv = [tok.split("|")[0] if re.fullmatch(r"[\w-]+(\|[\w-]+)+", tok) else tok
            for tok in shlex.split(command)[1:]]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            PARSER.parse_args(argv)
    except SystemExit as e:
        msg = err.getvalue().strip()
        if not e.code or command.rstrip().endswith("..."):
            return ""
        if re.search(r"invalid \w+ value: '([A-Z_]+|\$\{?\w+\}?)'", msg):   # a placeholder: --episode I, $b
            return ""
        return msg.splitlines()[-1] if msg else f"exit {e.code}"
    return ""


def test_doc_commands_are_found():
    commands = [c for path in DOCS for c in doc_commands(path.read_text())]
    assert len(commands) > 50
    assert any(c.startswith("action-images eval ") for c in commands)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_doc_command_parses(path):
    bad = [f"{c}\n    {err}" for c in doc_commands(path.read_text())
           if (err := parse_error(c))]
    assert not bad, f"{path.relative_to(ROOT)}: commands the CLI refuses:\n" + "\n".join(bad)


def test_a_wrong_flag_is_caught():
    """The checker itself: a flag that does not exist and an unknown choice are errors; a mention is not."""
    assert "unrecognized arguments" in parse_error("action-images eval --checkpoint R --out D --no-such-flag")
    assert "invalid choice" in parse_error("action-images bench nonsense --json x.json")
    assert parse_error("action-images eval --checkpoint R --tasks pick_cube --out D [--perturb-cameras]") == ""
    assert parse_error("action-images serve") == ""
    assert "unrecognized arguments" in parse_error("action-images serve --no-such-flag")   # a mention, still checked
    assert parse_error("action-images bench serve --max-batch $b --json OUT") == ""
    assert "invalid int value" in parse_error("action-images bench serve --max-batch four --json OUT")
    assert parse_error("action-images bench codec|sim --json OUT") == ""
    assert parse_error("action-images eval --out D {--rig-distribution train | --cameras left,top} --videos 1") == ""
    assert doc_commands("```bash\naction-images eval --checkpoint R \\\n  --out D   # a comment\n```") == [
        "action-images eval --checkpoint R --out D"]
