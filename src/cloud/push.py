"""Push an experiment and prove it whole before anything may be deleted; never over another's.

    python -m src.cloud.push <experiment name> --preflight --record FILE   # before the run
    python -m src.cloud.push <experiment name> [--record FILE] [--git-remote origin] [--attempts 4]

``dvc exp push`` pushes the git ref first and the DVC cache after it. A machine lost between the
two leaves a ref on the git remote whose outputs are not in the DVC remote; on the machine that
recovers the job, the experiment has a new commit, the remote ref has diverged, and
``dvc exp push`` warns and exits 0 without uploading anything. So after pushing, this checks
that the git remote's ref is this experiment's commit and that the DVC remote holds every output
of it (``dvc status --cloud``). When either is not so it pushes again, up to ``--attempts``
times, and otherwise ends non-zero with one line: the caller keeps its checkpoints.

A diverged ref is pushed over (``--force``) only when this job put it there. ``--record`` names
the job's record (a JSON file in its checkpoint folder, which outlives its machines): for the
experiment's ref, the commits this job pushed to it, each written before its push. The
preflight, before any GPU hour, claims the ref when the git remote lacks it and refuses, with
one line, when the git remote holds a commit the record lacks: another job's experiment of the
same name on the same baseline. The push refuses the same way, without forcing, when such a
commit appears on the git remote while the job ran.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from src.cli import one_line_errors
from src.errors import PipelineError
from src.files import write_json

log = logging.getLogger(__name__)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    log.debug("%s", " ".join(args))
    return subprocess.run(args, capture_output=True, text=True)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit code {proc.returncode}"


def baseline_ref(name: str) -> tuple[str, str]:
    """(baseline commit, ref) of the experiment ``name`` on the workspace's HEAD, as DVC names it."""
    head = _run(["git", "rev-parse", "HEAD"])
    if head.returncode != 0:
        raise PipelineError(f"git rev-parse HEAD: {_last_line(head)}")
    base = head.stdout.strip()
    return base, f"refs/exps/{base[:2]}/{base[2:]}/{name}"


def experiment_ref(name: str) -> tuple[str, str]:
    """(ref, commit) of the experiment ``name`` on the workspace's baseline (HEAD)."""
    base, ref = baseline_ref(name)
    commit = _run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"])
    if commit.returncode != 0:
        raise PipelineError(f"no experiment named {name} on {base[:7]} ({ref})")
    return ref, commit.stdout.strip()


def remote_commit(git_remote: str, ref: str) -> str | None:
    """The commit ``ref`` names on the git remote, or None when it has no such ref."""
    proc = _run(["git", "ls-remote", git_remote, ref])
    if proc.returncode != 0:
        raise PipelineError(f"git ls-remote {git_remote}: {_last_line(proc)}")
    for line in proc.stdout.splitlines():
        sha, _, name = line.partition("\t")
        if name == ref:
            return sha
    return None


def outputs_not_in_remote() -> list[str]:
    """Outputs of the workspace's dvc.lock (the experiment just run here) that the default DVC
    remote lacks: ``dvc status --cloud`` says ``new`` (in the cache only) or ``missing``."""
    proc = _run(["dvc", "status", "--cloud", "--json"])
    if proc.returncode != 0:
        raise PipelineError(f"dvc status --cloud: {_last_line(proc)}")
    try:
        status = json.loads(proc.stdout.strip() or "{}")
    except ValueError as err:
        raise PipelineError(f"dvc status --cloud: unreadable answer ({proc.stdout[:200]!r})") from err
    return sorted(path for path, state in status.items() if state in ("new", "missing"))


def read_record(path: Path) -> dict[str, list[str]]:
    """The job's record: ref -> the commits this job pushed to it; empty when there is none yet."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise PipelineError(f"{path}: unreadable record of this job's pushes ({err})") from err
    if not (isinstance(record, dict) and all(isinstance(v, list) for v in record.values())):
        raise PipelineError(f"{path}: not a record of this job's pushes (ref -> commits)")
    return record


def write_record(path: Path, record: dict[str, list[str]]) -> None:
    """Replace the record whole (a rename, synced first), so that a machine lost mid-write leaves
    the old one."""
    write_json(path, record, sync=True)


def not_ours(git_remote: str, ref: str, theirs: str, name: str) -> PipelineError:
    return PipelineError(f"{git_remote} has {ref} at {theirs[:7]}, which this job did not push: another "
                         f"experiment named {name}; it is left alone (run this one under another EXP_NAME)")


def preflight(name: str, git_remote: str, record_path: Path) -> None:
    """Before the run: the experiment's ref on the git remote is free (then claimed in the
    record), or holds a commit this job pushed before a restart; otherwise one line."""
    _, ref = baseline_ref(name)
    theirs = remote_commit(git_remote, ref)
    record = read_record(record_path)
    if theirs is not None and theirs not in record.get(ref, []):
        raise not_ours(git_remote, ref, theirs, name)
    record.setdefault(ref, [])
    write_record(record_path, record)
    log.info("%s on %s: %s", ref, git_remote, "free, claimed" if theirs is None
             else f"{theirs[:7]}, pushed by this job before a restart")


def problems(ref: str, commit: str, theirs: str | None, git_remote: str) -> list[str]:
    found = []
    if theirs != commit:
        found.append(f"{git_remote} has {theirs[:7] if theirs else 'no'} {ref}, not {commit[:7]}")
    missing = outputs_not_in_remote()
    if missing:
        found.append(f"the DVC remote lacks {len(missing)} output(s): {', '.join(missing[:5])}"
                     + (", ..." if len(missing) > 5 else ""))
    return found


def push_whole(name: str, git_remote: str = "origin", attempts: int = 4, wait: float = 5.0,
               record_path: Path | None = None) -> int:
    """Push until the experiment is whole on both remotes; return the pushes it took. Without
    ``record_path`` nothing is forced."""
    ref, commit = experiment_ref(name)
    if record_path is not None:  # before the ref can reach the git remote
        record = read_record(record_path)
        if commit not in record.get(ref, []):
            write_record(record_path, {**record, ref: [*record.get(ref, []), commit]})
    args = ["dvc", "exp", "push", "--run-cache", git_remote, name]
    for attempt in range(1, attempts + 1):
        proc = _run(args)
        sys.stderr.write(proc.stderr)
        if proc.returncode != 0:
            log.warning("push %d of %d: %s", attempt, attempts, _last_line(proc))
        theirs = remote_commit(git_remote, ref)
        found = problems(ref, commit, theirs, git_remote)
        if not found:
            log.info("experiment %s is whole on %s and the DVC remote (push %d)", name, git_remote, attempt)
            return attempt
        log.warning("push %d of %d left it incomplete: %s", attempt, attempts, "; ".join(found))
        if theirs not in (None, commit):  # diverged: forced only over a commit of this job's own
            if record_path is None or theirs not in read_record(record_path).get(ref, []):
                raise not_ours(git_remote, ref, theirs, name)
            args = ["dvc", "exp", "push", "--force", "--run-cache", git_remote, name]
        if attempt < attempts:
            time.sleep(wait * attempt)
    raise PipelineError(f"experiment {name} is not whole after {attempts} pushes ({'; '.join(found)}); "
                        "its checkpoints are kept")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the experiment's name (dvc exp run --name)")
    parser.add_argument("--record", type=Path, help="the job's record of its pushes (see the module doc)")
    parser.add_argument("--preflight", action="store_true", help="check and claim the ref before the run")
    parser.add_argument("--git-remote", default="origin")
    parser.add_argument("--attempts", type=int, default=4)
    parser.add_argument("--wait", type=float, default=5.0, help="seconds before the second push (then more)")
    args = parser.parse_args(argv)
    if args.preflight and args.record is None:
        parser.error("--preflight needs --record")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.preflight:
        return one_line_errors(lambda: preflight(args.name, args.git_remote, args.record))
    return one_line_errors(lambda: push_whole(args.name, args.git_remote, args.attempts, args.wait, args.record))


if __name__ == "__main__":
    raise SystemExit(main())
