"""`cloud submit slurm JOB...` and `cloud submit ray JOB...`: run any `cloud` command on a
cluster. JOB is the command and its arguments, after the options (a leading `--` is allowed)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Every other subcommand may be submitted; these launchers only make sense where you type.
NOT_SUBMITTABLE = ("submit",)


def register(subparsers: argparse._SubParsersAction) -> None:
    submit = subparsers.add_parser(
        "submit", help="run a cloud command on a Slurm allocation or a Ray cluster"
    )
    targets = submit.add_subparsers(dest="submit_target", required=True, metavar="TARGET")
    _register_slurm(targets)
    _register_ray(targets)


def _register_slurm(targets: argparse._SubParsersAction) -> None:
    slurm = targets.add_parser(
        "slurm",
        help="write an sbatch script for the command and submit it with sbatch",
        description=(
            "Training commands (pretrain, scaling sweep, finetune, debye) run one train.launcher "
            "per node, the rendezvous store on the first node's NodeAddr only (a one-node job "
            "listens on loopback only); corpus build starts a Ray cluster in "
            "the allocation; other commands run once. Jobs requeue themselves before the time "
            "limit and training resumes from its latest checkpoint (--resume). The script is "
            "written under --run-dir, where Slurm also writes its log."
        ),
    )
    slurm.add_argument("--nodes", type=int, default=1, metavar="N")
    slurm.add_argument("--gpus-per-node", type=int, default=0, metavar="G")
    slurm.add_argument("--cpus-per-task", type=int, default=None, metavar="C")
    slurm.add_argument("--partition", metavar="P")
    slurm.add_argument("--time", metavar="T", help="time limit, e.g. 24:00:00")
    slurm.add_argument("--account", metavar="A")
    slurm.add_argument("--job-name", metavar="NAME")
    slurm.add_argument(
        "--run-dir", default="runs/slurm", metavar="DIR", help="where the script and log go"
    )
    slurm.add_argument("--dry-run", action="store_true", help="print the script, submit nothing")
    slurm.add_argument("job", nargs=argparse.REMAINDER, metavar="JOB", help="cloud command")
    slurm.set_defaults(func=run_slurm)


def _register_ray(targets: argparse._SubParsersAction) -> None:
    ray = targets.add_parser(
        "ray",
        help="submit the command through Ray's job submission API",
        description=(
            "The entrypoint is `cloud JOB...` (quoted), run by the cluster's Python "
            "environment; --working-dir is uploaded and becomes the job's directory."
        ),
    )
    ray.add_argument(
        "--address", required=True, metavar="ADDR", help="dashboard address, http://HOST:8265"
    )
    ray.add_argument("--working-dir", metavar="DIR", help="directory uploaded with the job")
    ray.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable"
    )
    ray.add_argument("--executable", default="cloud", help="the cloud command on the cluster")
    ray.add_argument("--submission-id", metavar="ID", help="job id to use (default: Ray's)")
    ray.add_argument(
        "--dry-run", action="store_true", help="print entrypoint and runtime env, submit nothing"
    )
    ray.add_argument("job", nargs=argparse.REMAINDER, metavar="JOB", help="cloud command")
    ray.set_defaults(func=run_ray)


def job_tokens(args: argparse.Namespace) -> list[str]:
    """The JOB tokens, without a leading `--`, checked to start with a cloud command."""
    job = list(args.job)
    if job and job[0] == "--":
        job = job[1:]
    if not job:
        raise ValueError("no JOB given: `cloud submit TARGET [options] [--] COMMAND [ARGS...]`")
    known = known_commands()
    if job[0] in NOT_SUBMITTABLE or job[0] not in known:
        raise ValueError(f"{job[0]!r} is not a cloud command to submit; choose from {known}")
    return job


def known_commands() -> list[str]:
    """Registered subcommands, plus the launch-table commands whose modules may be absent."""
    from cluster.slurm import RAY_COMMANDS, TRAINING_COMMANDS
    from train.cli import build_parser

    parser = build_parser()
    names = set()
    for action in parser._actions:  # argparse has no public accessor for subcommands
        if isinstance(action, argparse._SubParsersAction):
            names.update(action.choices)
    names.update(command[0] for command in (*TRAINING_COMMANDS, *RAY_COMMANDS))
    return sorted(names - set(NOT_SUBMITTABLE))


def run_slurm(args: argparse.Namespace) -> int:
    from cluster.slurm import (
        SlurmResources,
        default_job_name,
        render_sbatch,
        submit_sbatch,
        write_sbatch,
    )

    try:
        job = job_tokens(args)
        resources = SlurmResources(
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            cpus_per_task=args.cpus_per_task,
            partition=args.partition,
            time=args.time,
            account=args.account,
            job_name=args.job_name,
        )
        script = render_sbatch(job, resources, workdir=Path.cwd())
    except ValueError as exc:
        print(f"cloud submit slurm: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        sys.stdout.write(script)
        return 0
    run_dir = Path(args.run_dir).resolve()
    path = write_sbatch(script, run_dir, resources.job_name or default_job_name(job))
    try:
        job_id = submit_sbatch(path)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"cloud submit slurm: {exc} (script kept at {path})", file=sys.stderr)
        return 1
    name = resources.job_name or default_job_name(job)
    print(f"submitted Slurm job {job_id}: {path}")
    print(f"log: {run_dir / f'slurm-{name}-{job_id}.out'}")
    return 0


def run_ray(args: argparse.Namespace) -> int:
    from cluster.ray_jobs import (
        build_entrypoint,
        build_runtime_env,
        follow_command,
        parse_env,
        submit_job,
    )

    try:
        job = job_tokens(args)
        env = parse_env(args.env)
        entrypoint = build_entrypoint(job, args.executable)
        runtime_env = build_runtime_env(args.working_dir, env)
    except (ValueError, FileNotFoundError) as exc:
        print(f"cloud submit ray: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"entrypoint: {entrypoint}")
        print(f"runtime_env: {json.dumps(runtime_env, indent=1, sort_keys=True)}")
        return 0
    try:
        job_id = submit_job(
            args.address,
            job,
            working_dir=args.working_dir,
            env_vars=env,
            executable=args.executable,
            submission_id=args.submission_id,
        )
    except (ConnectionError, RuntimeError) as exc:
        print(f"cloud submit ray: cannot submit to {args.address}: {exc}", file=sys.stderr)
        return 1
    print(f"submitted Ray job {job_id} to {args.address}")
    print(f"follow its logs: {follow_command(args.address, job_id)}")
    return 0
