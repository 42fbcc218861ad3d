"""Incremental cost: what a rerun does when nothing, or only a sanity-check prompt, changed.

On a workspace where `dvc exp run` has finished (run it first), it times:
  1. a no-op `dvc exp run` (goal: at most 5 s) and lists the stages it ran (none expected);
  2. `dvc exp run` with one sanity-check prompt changed, and lists the stages it ran
     (sanity_check alone expected).
The experiments it records are removed afterwards (`dvc exp remove`), and the workspace is
put back: params.yaml from git, dvc.lock as it was, then `dvc checkout`. The last line is a
one-line summary.

    python bench/incremental.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dvc(*args: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(["dvc", *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"error: dvc {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return seconds, proc.stdout + proc.stderr


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def main() -> None:
    _, status = dvc("status")
    if "up to date" not in status:
        raise SystemExit("error: the workspace is not up to date: run `dvc exp run` first\n" + status)
    sys.path.insert(0, str(ROOT))
    from src.config import load_params

    prompts = list(load_params(str(ROOT)).sanity_check.prompts)
    lock = (ROOT / "dvc.lock").read_bytes()
    noop_s, noop_out = dvc("exp", "run", "--name", "bench-noop")
    changed = [*prompts[:-1], prompts[-1] + " Answer briefly."]
    value = "[" + ",".join('"' + p.replace('"', '\\"') + '"' for p in changed) + "]"
    prompt_s, prompt_out = dvc("exp", "run", "--name", "bench-prompt", "-S", f"sanity_check.prompts={value}")
    dvc("exp", "remove", "bench-noop", "bench-prompt")
    subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=ROOT, check=True)
    (ROOT / "dvc.lock").write_bytes(lock)
    dvc("checkout", "--force")
    print(f"no-op dvc exp run: {noop_s:.1f} s, stages run: {ran(noop_out) or 'none'}")
    print(f"one sanity-check prompt changed: {prompt_s:.1f} s, stages run: {ran(prompt_out) or 'none'}")
    print(f"summary: no-op exp run {noop_s:.1f} s (goal <= 5 s), stages {len(ran(noop_out))}; prompt change "
          f"{prompt_s:.1f} s, stages {','.join(ran(prompt_out)) or 'none'} (goal: sanity_check only)")


if __name__ == "__main__":
    main()
