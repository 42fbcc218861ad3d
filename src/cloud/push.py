"""Push an experiment and prove it whole before anything may be deleted.

    python -m src.cloud.push <experiment name> [--git-remote origin] [--attempts 4]

``dvc exp push`` pushes the git ref first and the DVC cache after it. A machine lost between the
two leaves a ref on the git remote whose outputs are not in the DVC remote; on the machine that
recovers the job, the experiment has a new commit, the remote ref has diverged, and
``dvc exp push`` warns and exits 0 without uploading anything. So after pushing, this checks
that the git remote's ref is this experiment's commit and that the DVC remote holds every output
of it (``dvc status --cloud``). When either is not so it pushes again (``--force`` for a diverged
ref: this machine holds the finished experiment), up to ``--attempts`` times, and otherwise ends
non-zero with one line: the caller keeps its checkpoints.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time

from src.cli import one_line_errors
from src.errors import PipelineError

log = logging.getLogger(__name__)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    log.debug("%s", " ".join(args))
    return subprocess.run(args, capture_output=True, text=True)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit code {proc.returncode}"


def experiment_ref(name: str) -> tuple[str, str]:
    """(ref, commit) of the experiment ``name`` on the workspace's baseline (HEAD)."""
    head = _run(["git", "rev-parse", "HEAD"])
    if head.returncode != 0:
        raise PipelineError(f"git rev-parse HEAD: {_last_line(head)}")
    base = head.stdout.strip()
    ref = f"refs/exps/{base[:2]}/{base[2:]}/{name}"
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


def problems(name: str, git_remote: str) -> list[str]:
    ref, commit = experiment_ref(name)
    found = []
    theirs = remote_commit(git_remote, ref)
    if theirs != commit:
        found.append(f"{git_remote} has {theirs[:7] if theirs else 'no'} {ref}, not {commit[:7]}")
    missing = outputs_not_in_remote()
    if missing:
        found.append(f"the DVC remote lacks {len(missing)} output(s): {', '.join(missing[:5])}"
                     + (", ..." if len(missing) > 5 else ""))
    return found


def push_whole(name: str, git_remote: str = "origin", attempts: int = 4, wait: float = 5.0) -> int:
    """Push until the experiment is whole on both remotes; return the pushes it took."""
    args = ["dvc", "exp", "push", "--run-cache", git_remote, name]
    for attempt in range(1, attempts + 1):
        proc = _run(args)
        sys.stderr.write(proc.stderr)
        if proc.returncode != 0:
            log.warning("push %d of %d: %s", attempt, attempts, _last_line(proc))
        found = problems(name, git_remote)
        if not found:
            log.info("experiment %s is whole on %s and the DVC remote (push %d)", name, git_remote, attempt)
            return attempt
        log.warning("push %d of %d left it incomplete: %s", attempt, attempts, "; ".join(found))
        if any(f.startswith(git_remote) for f in found):
            # this machine's is the finished one
            args = ["dvc", "exp", "push", "--force", "--run-cache", git_remote, name]
        if attempt < attempts:
            time.sleep(wait * attempt)
    raise PipelineError(f"experiment {name} is not whole after {attempts} pushes ({'; '.join(found)}); "
                        "its checkpoints are kept")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the experiment's name (dvc exp run --name)")
    parser.add_argument("--git-remote", default="origin")
    parser.add_argument("--attempts", type=int, default=4)
    parser.add_argument("--wait", type=float, default=5.0, help="seconds before the second push (then more)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return one_line_errors(lambda: push_whole(args.name, args.git_remote, args.attempts, args.wait))


if __name__ == "__main__":
    raise SystemExit(main())
