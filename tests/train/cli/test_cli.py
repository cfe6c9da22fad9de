"""The `cloud` command line as a whole: commands listed in pipeline order, defaults shown."""

from __future__ import annotations

import argparse

import pytest

from train.cli import build_parser, main

PIPELINE = [
    "scope", "corpus", "pretrain", "export", "import-hf", "finetune", "predict", "debye",
    "scaling", "submit", "demo",
]  # fmt: skip


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                found.extend(_all_parsers(subparser))
    return found


def test_help_lists_the_commands_in_pipeline_order(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    # Command lines are indented by four spaces; their wrapped help by more.
    listed = [line.split()[0] for line in lines if line.startswith("    ") and line[4] != " "]
    assert listed == PIPELINE


def test_option_help_shows_the_defaults_worth_telling(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["corpus", "build", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    assert "samples per shard (default: 10000)" in text
    assert "spglib distance tolerance, Å (default: 0.01)" in text
    assert "full (comma-separated) (default: cloud)" in text
    assert "(scope, the default)" in text and "(default: scope)" not in text  # not said twice
    for parser in _all_parsers(build_parser()):  # and no "(default: None)" noise anywhere
        help_text = parser.format_help()
        assert "(default: None)" not in help_text and "(default: False)" not in help_text
