"""The job packages' public names: each the very object of its room, imported when first
used, so that the command line builds its parser without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from train.common.exports import lazy_exports
from train.common.paths import REPO, env_with_repository

PACKAGES = ("train.finetune", "train.debye", "train.demo", "train.pretrain")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_is_its_rooms_object(package: str) -> None:
    import importlib

    module = importlib.import_module(package)
    for room, names in module.ROOMS.items():
        holder = importlib.import_module(f"{package}.{room}")
        for name in names:
            assert getattr(module, name) is getattr(holder, name), f"{package}.{name}"
    assert sorted(module.__all__) == sorted(n for names in module.ROOMS.values() for n in names)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018


def test_the_old_module_names_still_import() -> None:
    from train.baselines import ClassicalBaseline
    from train.finetune.baselines import ClassicalBaseline as in_room
    from train.finetune.loading import load_task as loading_load_task
    from train.finetune.protocol import split_fold as protocol_split_fold
    from train.tasks import TASKS, load_task, split_fold

    assert load_task is loading_load_task and split_fold is protocol_split_fold
    assert ClassicalBaseline is in_room
    assert "matbench_dielectric" in TASKS


def test_a_name_listed_twice_or_shadowed_by_a_room_is_refused() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        lazy_exports("somewhere", {"a": ("x",), "b": ("x",)})
    with pytest.raises(ValueError, match="a room's name"):
        lazy_exports("somewhere", {"a": ("b",), "b": ("y",)})


def test_the_command_line_builds_its_parser_without_torch() -> None:
    code = (
        "import sys; from train.cli import build_parser; build_parser(); "
        "import train.debye, train.finetune, train.demo; "
        "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env_with_repository(),
        check=True,
    )
    assert result.stdout.strip() == "[]"
