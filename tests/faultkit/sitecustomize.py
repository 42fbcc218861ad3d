"""Fault injection for tests/test_faults.py: SIGKILL a stage's process at a chosen point.

Put this folder on PYTHONPATH and set ``FAULT_STAGE`` to a stage module (``src.stages.train``)
and ``FAULT_KILL`` to one of:
  ``step:N``   when training is about to take optimizer step N + 1 (N steps done);
  ``save:N``   while the checkpoint of step N is being written (adapter written, optimizer not);
  ``replace``  just before a finished ``*.tmp`` file or ``*.partial`` folder is renamed into place;
  ``push-cache`` in ``dvc exp push`` (FAULT_STAGE ``push``): after the git refs are pushed, before
               the DVC cache is uploaded.
Only the process whose command line names FAULT_STAGE is affected (not dvc, not other stages).

With ``ENV_RECORD_DIR`` set, every stage process (``-m src.stages.<stage>``) that exits writes the
names in its own ``/proc/self/environ`` to ``<ENV_RECORD_DIR>/<stage>-<pid>.json``: the
environment the stage's code could read.
"""

import os
import signal
import sys

_STAGE, _KILL = os.environ.get("FAULT_STAGE"), os.environ.get("FAULT_KILL", "")


def _die() -> None:
    sys.stderr.write(f"faultkit: SIGKILL {_STAGE} ({_KILL})\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _patch_trainer(trainer_module) -> None:
    kind, _, arg = _KILL.partition(":")
    step, cls = int(arg), trainer_module.Trainer
    if kind == "step":
        original = cls.training_step

        def training_step(self, *args, **kwargs):
            if self.state.global_step >= step:
                _die()
            return original(self, *args, **kwargs)

        cls.training_step = training_step
    else:
        original = cls._save_optimizer_and_scheduler

        def save(self, output_dir):
            if self.state.global_step == step:
                _die()
            return original(self, output_dir)

        cls._save_optimizer_and_scheduler = save


def _patch_renames() -> None:
    def guard(original):
        def rename(src, dst, *args, **kwargs):
            if str(src).endswith((".tmp", ".partial")):
                _die()
            return original(src, dst, *args, **kwargs)
        return rename

    os.replace, os.rename = guard(os.replace), guard(os.rename)


def _patch_exp_push(push_module) -> None:
    push_module._push_cache = lambda *args, **kwargs: _die()


class _ModuleHook:
    """Calls ``patch(module)`` right after ``name`` is first imported."""

    def __init__(self, name, patch):
        self.name, self.patch = name, patch

    def find_spec(self, name, path, target=None):
        if name != self.name:
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            self.patch(module)

        spec.loader.exec_module = exec_module
        return spec


if _STAGE and _STAGE in getattr(sys, "orig_argv", ()):
    if _KILL == "replace":
        _patch_renames()
    elif _KILL.startswith(("step:", "save:")):
        sys.meta_path.insert(0, _ModuleHook("transformers.trainer", _patch_trainer))
    elif _KILL == "push-cache" and "exp" in sys.orig_argv:
        sys.meta_path.insert(0, _ModuleHook("dvc.repo.experiments.push", _patch_exp_push))


def _record_environment(folder: str, module: str) -> None:
    import atexit
    import json

    def record():
        with open("/proc/self/environ", "rb") as f:
            names = sorted({entry.partition(b"=")[0].decode() for entry in f.read().split(b"\0") if entry})
        with open(os.path.join(folder, f"{module.rsplit('.', 1)[-1]}-{os.getpid()}.json"), "w") as f:
            json.dump({"argv": sys.orig_argv[1:], "names": names}, f)

    atexit.register(record)


_argv = getattr(sys, "orig_argv", [])
if os.environ.get("ENV_RECORD_DIR") and "-m" in _argv[:-1] and _argv[_argv.index("-m") + 1].startswith("src.stages."):
    _record_environment(os.environ["ENV_RECORD_DIR"], _argv[_argv.index("-m") + 1])
