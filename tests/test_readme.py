"""The README as a newcomer runs it: every command block, in order, on a fresh copy of the
repository, each command exiting 0 with the outputs the README promises (marker ``readme``:
``make test-readme``, which CI runs after ``make test``; minutes of work, so outside the
suite's 20-minute budget).

The copy holds the tracked and untracked (not ignored) files of this checkout, as a clone
would, and has no ``../shared`` beside it, so every command runs on the shipped sample in
``data/``; a second test runs the commands that name ``../shared`` where it is present.

What the test changes in a command, and why, is the table ``SUBSTITUTIONS``: what the README
says is yours (``my_structures/*.cif``), ``--dry-run`` for submissions to clusters these
machines do not have, and shorter runs (fewer steps or epochs, as ``KEY=VALUE`` overrides the
README says every job takes), so that the whole README runs in a few minutes. Commands it
does not run are in ``NOT_RUN`` with the reason. A README edit that adds, drops or reorders a
command fails ``test_every_readme_command_is_accounted_for`` until this table follows it.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHARED = "../shared"


@dataclass(frozen=True)
class Command:
    block: int
    """Index of the README's ```bash block."""
    text: str
    """The command with its continuation lines joined (a ``for`` loop is one command)."""

    @property
    def names_shared_data(self) -> bool:
        return SHARED in self.text


@dataclass(frozen=True)
class Substitution:
    pattern: str
    """Regular expression a command must match (searched)."""
    append: str = ""
    """Appended to the matching command (after the text ``after`` if given)."""
    after: str | None = None
    """Insert ``append`` right after the first occurrence of this text instead."""
    why: str = ""


SUBSTITUTIONS: tuple[Substitution, ...] = (
    Substitution(
        r"^cloud finetune --checkpoint (models|runs)/",
        " epochs=1 --folds 0 'baselines=[classical]'",
        why="25 or 40 epochs on 5 folds with a random-init twin → 1 epoch on fold 0: the run, "
        "its report and its model, not its score",
    ),
    Substitution(r"^cloud debye ", " epochs=1 batch_size=64", why="30 epochs → 1"),
    Substitution(
        r"pretrain .*run_dir=runs/tiny(-2p)?( system.zero_stage=2)?$",
        " train.max_steps=4 train.eval_interval=4 checkpoint.interval=2 train.log_interval=2",
        why="2,000 steps → 4",
    ),
    Substitution(
        r"pretrain .*--resume$",
        " train.max_steps=8 train.eval_interval=4 checkpoint.interval=2 train.log_interval=2",
        why="the resumed run carries on from step 4 to 8",
    ),
    Substitution(r"submit slurm ", " --dry-run", after="submit slurm", why="no Slurm here"),
    Substitution(r"submit ray ", " --dry-run", after="submit ray", why="no Ray cluster here"),
)

NOT_RUN: dict[str, str] = {
    "make demo": "`cloud demo` on data/ (15 min); tests/train/demo/test_demo.py runs `cloud demo --quick`",
    "make test": "this suite is `make test`",
    "tensorboard --logdir": "a server that runs until stopped; the event files are read instead",
    "cloud scaling sweep --config configs/scaling/cpu.yaml": (
        "the 2-hour CPU study of docs/scaling/ (docs/scaling/commands.sh)"
    ),
}


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def readme_commands(text: str) -> list[Command]:
    """Each block's commands: comment lines dropped, ``\\`` continuations joined, a ``for``
    loop kept whole (its lines joined by newlines) up to its ``done``."""
    commands: list[Command] = []
    for index, block in enumerate(bash_blocks(text)):
        pending = ""
        for raw in block.splitlines():
            line = raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            if line.endswith("\\"):
                pending += line.removesuffix("\\").strip() + " "
                continue
            pending += line
            if pending.startswith("for ") and line != "done":
                pending += "\n"
                continue
            commands.append(Command(index, re.sub(r"\s+#\s.*$", "", pending).strip()))
            pending = ""
    return commands


def not_run_reason(command: Command) -> str | None:
    return next((why for prefix, why in NOT_RUN.items() if command.text.startswith(prefix)), None)


def substituted(command: Command) -> str:
    text = command.text
    for rule in SUBSTITUTIONS:
        if re.search(rule.pattern, text):
            if rule.after is not None:
                head, sep, tail = text.partition(rule.after)
                text = head + sep + rule.append + tail
            else:
                text += rule.append
    return text


def fresh_copy(destination: Path) -> Path:
    """The files a clone of this checkout would hold (tracked and untracked, not ignored),
    with the checkout's environment linked in (a clone's `make` would build the same one)."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    root = destination / "clone"
    for name in filter(None, listing.split("\0")):
        source = REPO / name
        if source.is_file():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (root / ".venv").symlink_to(REPO / ".venv")
    return root


def environment(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CLOUD_SHARED_DATA"}
    env["PATH"] = os.pathsep.join([str(root / ".venv" / "bin"), env.get("PATH", "")])
    env["PYTHONPATH"] = str(root)  # the copy's code, not the checkout's editable install
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("DS_ACCELERATOR", "cpu")
    return env


def my_structures(root: Path, count: int = 3) -> None:
    """What the README calls yours: a folder of CIF files (from the shipped sample)."""
    from pymatgen.core import Structure

    with gzip.open(root / "data/matbench/matbench_phonons_sample.json.gz", "rt") as handle:
        table = json.load(handle)
    records = table if isinstance(table, list) else list(table["structure"].values())
    folder = root / "my_structures"
    folder.mkdir()
    for index, record in enumerate(records[:count]):
        entry = record.get("structure", record) if isinstance(record, dict) else record
        structure = Structure.from_dict(entry)
        structure.to(filename=str(folder / f"crystal-{index}.cif"))


def run(command: str, root: Path, env: dict[str, str], timeout: int = 900) -> str:
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"README command failed ({result.returncode}):\n{command}\n{output[-4000:]}"
    )
    return result.stdout


# ----------------------------------------------------------------------------- fast checks


def test_every_readme_command_is_accounted_for() -> None:
    commands = readme_commands(README.read_text())
    assert len(commands) >= 20
    assert all(
        c.text.startswith(("cloud ", "make ", "python ", "tensorboard ", "for ")) for c in commands
    ), [
        c.text
        for c in commands
        if not c.text.startswith(("cloud ", "make ", "python ", "tensorboard ", "for "))
    ]
    for prefix in NOT_RUN:
        assert any(c.text.startswith(prefix) for c in commands), (
            f"NOT_RUN names {prefix!r}, gone from README"
        )
    for rule in SUBSTITUTIONS:
        assert any(re.search(rule.pattern, c.text) for c in commands), (
            f"no README command matches {rule.pattern!r}"
        )


def test_commands_are_read_as_a_shell_would() -> None:
    text = "```bash\n# a comment\ncloud a \\\n    --b c   # trailing\nfor k in 1 2; do\n  cloud d $k\ndone\n```\n"
    assert [c.text for c in readme_commands(text)] == [
        "cloud a --b c",
        "for k in 1 2; do\ncloud d $k\ndone",
    ]


def test_python_promises_are_read_as_written() -> None:
    assert promise_kept("'1 6 a | 4a | Na 1'", "'1 6 a | 4a | Na 1'")
    assert not promise_kept("'1 6 b'", "'1 6 a'")
    assert promise_kept("'x | 4a Na | Na 1'", "'… | 4a Na | Na 1'")
    assert not promise_kept("'x | 4a Cl | Na 1'", "'… | 4a Na | Na 1'")
    assert promise_kept("225", "225") and not promise_kept("221", "225")


# ----------------------------------------------------------------------------- the README run


def promise_kept(got: str, promised: str) -> bool:
    """Whether ``repr`` text ``got`` is what a README comment promises: a quoted string
    (``…`` stands for any text), a number, or prose (then only that the line ran)."""
    if promised.startswith("'") and promised.endswith("'"):
        want, value = promised[1:-1], ast.literal_eval(got)
        head, ellipsis, tail = want.partition("…")
        return value.startswith(head) and value.endswith(tail) if ellipsis else value == want
    if re.fullmatch(r"-?\d+(\.\d+)?", promised):
        return got == promised
    return True


def check_python_block(block: str, root: Path, env: dict[str, str]) -> None:
    """Runs the block; each top-level ``expression  # promise`` line must keep its promise."""
    checks = []
    for line in block.splitlines():
        code, sep, promised = line.partition("  # ")
        is_expression = not code.startswith((" ", "from ", "import ")) and " = " not in code
        if sep and is_expression:
            checks.append((code.strip(), promised.strip()))
    program = [block, "import json", "results = []"]
    program += [f"results.append(repr({code}))" for code, _ in checks]
    program.append("print(json.dumps(results))")
    script = "python - <<'EOF'\n" + "\n".join(program) + "\nEOF"
    results = json.loads(run(script, root, env).splitlines()[-1])
    for (code, promised), got in zip(checks, results, strict=True):
        assert promise_kept(got, promised), f"README: {code}  # {promised}\ngave {got}"


@pytest.fixture(scope="module")
def readme_clone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = fresh_copy(tmp_path_factory.mktemp("readme"))
    my_structures(root)
    return root, environment(root)


@pytest.mark.slow
@pytest.mark.readme
@pytest.mark.timeout(1800)
def test_every_readme_block_runs_on_a_fresh_clone_without_shared_data(readme_clone) -> None:
    root, env = readme_clone
    assert not (root.parent / "shared").exists()
    text = README.read_text()
    outputs: dict[str, str] = {}
    for command in readme_commands(text):
        if command.names_shared_data or not_run_reason(command):
            continue
        outputs[command.text] = run(substituted(command), root, env)
    for block in python_blocks(text):
        check_python_block(block, root, env)

    # What the README promises of each stage.
    encoded = outputs[
        "cloud scope encode data/matbench/matbench_dielectric_sample.json.gz | head -3"
    ]
    assert len(encoded.splitlines()) == 3
    canonical = outputs["cloud scope encode --variant canonical --json my_structures/*.cif"]
    assert [json.loads(line)["scope"].count("|") for line in canonical.splitlines()] == [2, 2, 2]
    report = (root / "runs/ft-phonons/report.md").read_text()
    assert "SHIPPED SAMPLE" in report or "NOT comparable" in report
    for csv in (root / "predictions.csv",):
        assert len(csv.read_text().splitlines()) == 1 + 3  # a header and one row per CIF
    manifest = json.loads((root / "runs/corpus/manifest.json").read_text())
    assert manifest and list(root.glob("runs/corpus/corpus-*.tar"))
    assert list((root / "runs/tiny/tensorboard").rglob("events.out.tfevents.*"))
    assert (root / "runs/tiny-package/model.safetensors").is_file()
    assert (root / "runs/scaling/cpu-tiny/report").is_dir()
    assert (root / "runs/ft/report.md").is_file()


@pytest.mark.slow
@pytest.mark.readme
@pytest.mark.shared_data
@pytest.mark.timeout(1800)
def test_readme_commands_that_name_shared_data_run_where_it_is_present(
    readme_clone, shared_data: Path
) -> None:
    root, env = readme_clone
    (root.parent / "shared").symlink_to(shared_data.parent)
    try:
        for command in readme_commands(README.read_text()):
            if command.names_shared_data and not not_run_reason(command):
                run(substituted(command), root, env)
    finally:
        (root.parent / "shared").unlink()
    assert (root / "runs/corpus-full/manifest.json").is_file()
