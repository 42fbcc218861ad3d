"""Resumable training: fingerprinted checkpoints, written so that a half-written one is never used.

Checkpoints live under a root folder: ``paths.checkpoints`` in params, or the environment
variable ``TRAIN_CHECKPOINT_DIR`` (a mounted bucket, say, so they outlive a spot machine).
Each training configuration gets its own folder under it, named by a fingerprint of what
decides the result: the params that change the weights, the data files' hashes, the base
model's files, the library versions and the number of processes.

    <root>/<fingerprint>/fingerprint.json           what the fingerprint was made of
    <root>/<fingerprint>/checkpoint-<step>/         adapter, optimizer, scheduler, RNG states,
                                                    trainer state (step, data position, logs)
    <root>/<fingerprint>/checkpoint-<step>/manifest.json   written last: every file and its size
    <root>/<fingerprint>/.staging/                  where a checkpoint is written before the rename
    <root>/<fingerprint>/.lock                      held (flock) by the run training this configuration

A checkpoint is complete when its folder has been renamed into place and every file its
manifest lists is there with the listed size (the manifest also covers object-store
mounts, where a folder rename is a copy). On start, training resumes from the newest
complete checkpoint of its own fingerprint; folders of other fingerprints are left alone,
with a log line that names the settings that differ.

Two runs of one configuration that share the root (``dvc queue`` workers, two ``--temp``
experiments, two jobs on one bucket) would write the same staging folder and prune each other's
checkpoints: the first process of a run holds an exclusive lock on the folder while it trains,
and a second run stops at once with one line naming the holder. A lock dies with its process
(even by SIGKILL), so a preempted machine never leaves one behind; on a file system without
locks (some bucket mounts) training goes on with a warning.

A run that succeeds deletes its configuration's checkpoints, unless ``TRAIN_KEEP_CHECKPOINTS``
is set (sky-training.yaml sets it, and deletes the folder once the results are pushed): then
a rerun resumes from the final checkpoint and trains no further steps.

The train and align stages go through one object, ``RunCheckpoints``: made from what decides
the result, it finds the checkpoint to resume from and whether training had finished there, gives
the trainer class that writes checkpoints into the store, trains from there (or restores a
finished run), reports what was resumed, and cleans up.

    with RunCheckpoints("models/checkpoints", params, {"train": "data/final/train.jsonl"}, "models/base",
                        keep=2) as checkpoints:
        checkpoints.find(sft_config)  # checkpoints.resume_from, checkpoints.finished
        trainer = checkpoints.trainer_class(SFTTrainer)(args=sft_config, ...)
        seconds = checkpoints.train(trainer, callbacks)

Its Trainer side (``StagedCheckpoints``, ``RunCheckpoints.restore`` and
``RunCheckpoints.tokens_before_resume``) is the only code of the pipeline that uses
``transformers.Trainer``'s private methods and attributes, so that a transformers upgrade that
changes them is checked in one place (tests/test_private_api.py checks that they are there).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
from pathlib import Path

from src.errors import PipelineError
from src.files import file_digest, write_json

log = logging.getLogger(__name__)

ENV_VAR = "TRAIN_CHECKPOINT_DIR"
KEEP_ENV_VAR = "TRAIN_KEEP_CHECKPOINTS"
FINGERPRINT_FILE = "fingerprint.json"
MANIFEST_FILE = "manifest.json"
STAGING = ".staging"
LOCK_FILE = ".lock"
PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"  # what transformers.Trainer names it
ADAPTER_FILE = "adapter_model.safetensors"  # what PEFT names an adapter's weights
# SFT settings that change logging, evaluation or checkpointing but not the trained weights.
NOT_RESULT_SFT_KEYS = frozenset({
    "save_strategy", "save_steps", "save_total_limit", "logging_strategy", "logging_steps",
    "logging_first_step", "eval_strategy", "eval_steps", "per_device_eval_batch_size",
    "eval_on_start", "disable_tqdm",
})
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes")


def checkpoint_root(configured: str) -> Path:
    """The environment variable ``TRAIN_CHECKPOINT_DIR`` when set, else ``paths.checkpoints``."""
    return Path(os.environ.get(ENV_VAR) or configured)


def keep_after_success() -> bool:
    """Whether ``TRAIN_KEEP_CHECKPOINTS`` asks to keep checkpoints after training succeeds."""
    return os.environ.get(KEEP_ENV_VAR, "").strip().lower() in {"1", "true", "yes"}


def folder_digest(folder: Path) -> str:
    """One digest over every file of a model folder (names, and contents sampled for big files)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(folder).as_posix()}\0{file_digest(path, sampled=True)}\0".encode())
    return h.hexdigest()


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def fingerprint_inputs(params: dict, data_files: dict[str, str], base_model: str) -> dict:
    """What decides the trained weights: ``params`` (the ``chat`` and ``train`` sections), the
    data files and the base model folder, the library versions and the process count."""
    train = dict(params["train"])
    train["sft"] = {k: v for k, v in train["sft"].items() if k not in NOT_RESULT_SFT_KEYS}
    train.pop("eval_records", None)
    result = {**params, "train": train}
    if "align" in params:  # the align stage's run: its trainer's logging and checkpointing keys are not results
        result["align"] = {**params["align"],
                           "dpo": {k: v for k, v in params["align"]["dpo"].items() if k not in NOT_RESULT_SFT_KEYS}}
    return {
        "params": result,
        "data": {name: file_digest(Path(path)) for name, path in sorted(data_files.items())},
        "base_model": folder_digest(Path(base_model)),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }


def fingerprint_id(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _flatten(data, prefix: str = "") -> dict:
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out |= _flatten(value, f"{prefix}{key}.")
        return out
    return {prefix.rstrip("."): data}


def differences(mine: dict, theirs: dict, limit: int = 4) -> str:
    """The keys on which two fingerprints' inputs differ, as ``key: theirs -> mine``."""
    a, b = _flatten(mine), _flatten(theirs)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    shown = [f"{k}: {b.get(k)!r} -> {a.get(k)!r}" if not k.startswith(("data.", "base_model"))
             else f"{k} changed" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(shown) + more


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())


def step_of(folder: Path) -> int:
    return int(folder.name.removeprefix(PREFIX))


def is_final(folder: Path) -> bool:
    """Whether the checkpoint is of the run's last step (its trainer state says so)."""
    state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    return state["global_step"] >= state["max_steps"] > 0


class CheckpointStore:
    """The checkpoints of one training configuration under a root folder."""

    def __init__(self, root: Path, inputs: dict, keep: int | None):
        self.root, self.inputs, self.keep = root, inputs, keep
        self.id = fingerprint_id(inputs)
        self.dir = root / self.id
        self.staging = self.dir / STAGING
        self._lock = None  # the open lock file while this process holds it

    def _cannot_write(self, err: Exception) -> PipelineError:
        return PipelineError(f"{self.dir}: cannot write checkpoints ({getattr(err, 'strerror', None) or err}); "
                             f"check paths.checkpoints or {ENV_VAR}")

    def _hold(self, handle) -> None:
        """Take the exclusive lock on the open ``handle``, or stop with one line naming the run
        that holds it."""
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise PipelineError(f"{self.dir}: another run of this configuration is training here ({holder}); "
                                f"wait for it to end, or give this run its own {ENV_VAR}") from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            log.warning("%s: the file system cannot lock (%s); make sure no other run of this "
                        "configuration uses this folder", self.dir, err.strerror)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        handle.flush()
        self._lock = handle

    def prepare(self, lock: bool = True) -> None:
        """Create this configuration's folder and hold it (``lock``: the run's first process),
        remove a checkpoint left half-written, and log why the checkpoints of other
        configurations are not used."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            handle = open(self.dir / LOCK_FILE, "a+", encoding="utf-8") if lock else None  # noqa: SIM115
        except OSError as err:
            raise self._cannot_write(err) from err
        if handle:
            self._hold(handle)  # held until release() or the process ends
        try:
            write_json(self.dir / FINGERPRINT_FILE, self.inputs, sync=True)
        except (OSError, PipelineError) as err:
            raise self._cannot_write(err) from err
        if self.staging.exists() and any(self.staging.iterdir()):
            log.info("removing %s: a checkpoint whose writing was interrupted", self.staging)
        shutil.rmtree(self.staging, ignore_errors=True)
        for other in sorted(p for p in self.root.iterdir() if p.is_dir() and p != self.dir):
            theirs = other / FINGERPRINT_FILE
            if not theirs.is_file():
                log.info("ignoring %s: not a checkpoint folder of this pipeline (no %s)", other,
                         FINGERPRINT_FILE)
                continue
            try:
                why = differences(self.inputs, json.loads(theirs.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError):
                why = f"its {FINGERPRINT_FILE} cannot be read"
            log.info("ignoring checkpoints in %s: another configuration (%s)", other, why)

    def complete(self) -> list[Path]:
        """This configuration's complete checkpoints, oldest first."""
        found = []
        for folder in self.dir.glob(f"{PREFIX}*"):
            if not folder.name.removeprefix(PREFIX).isdigit():
                continue
            problem = self._problem(folder)
            if problem:
                log.info("ignoring %s: %s", folder, problem)
            else:
                found.append(folder)
        return sorted(found, key=step_of)

    def _problem(self, folder: Path) -> str | None:
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return f"incomplete (no readable {MANIFEST_FILE})"
        if manifest.get("fingerprint") != self.id:
            return "written by another configuration"
        for name, size in manifest["files"].items():
            path = folder / name
            if not path.is_file() or path.stat().st_size != size:
                return f"incomplete ({name} missing or of the wrong size)"
        return None

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def commit(self, staged: Path) -> Path:
        """Seal a checkpoint written under ``.staging``: drop the pickled training arguments
        (never read back), write the manifest, sync, rename into place, prune old ones."""
        (staged / "training_args.bin").unlink(missing_ok=True)
        files = {p.relative_to(staged).as_posix(): p.stat().st_size
                 for p in sorted(staged.rglob("*")) if p.is_file()}
        _fsync_tree(staged)
        write_json(staged / MANIFEST_FILE, {"fingerprint": self.id, "files": files}, sync=True)
        final = self.dir / staged.name
        if final.exists():
            shutil.rmtree(final)
        os.replace(staged, final)
        self.prune()
        return final

    def prune(self) -> None:
        """Keep the newest ``keep`` complete checkpoints (all when ``keep`` is None)."""
        if not self.keep:
            return
        for old in self.complete()[:-self.keep]:
            log.debug("removing old checkpoint %s", old)
            shutil.rmtree(old, ignore_errors=True)

    def remove(self) -> None:
        """Delete this configuration's checkpoints (its adapter is saved; they are spent)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.release()

    def release(self) -> None:
        """Let go of the folder (the process ending does the same)."""
        if self._lock:
            self._lock.close()
            self._lock = None


class StagedCheckpoints:
    """Mixed into a ``transformers.Trainer`` by ``RunCheckpoints.trainer_class``: each checkpoint is
    written under the store's ``.staging`` folder and committed (manifest, sync, rename into place,
    pruning) only once it is whole."""

    checkpoint_store: CheckpointStore  # set on the class by RunCheckpoints.trainer_class()

    def _get_output_dir(self, trial):
        return str(self.checkpoint_store.staging)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # PEFT loads a saved adapter in float32; TRL trains QLoRA adapters in bfloat16. Keep
        # the dtype the run had, or a resumed run would take different steps from then on.
        target = model if model is not None else self.model
        dtypes = {n: p.dtype for n, p in target.named_parameters() if p.requires_grad}
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        # With a second adapter (align's frozen "ref" copy), PEFT saves it in a subfolder and the
        # trained one at the top; Trainer then loads the subfolders only. Load the trained one too.
        adapters = getattr(target, "peft_config", {})
        if len(adapters) > 1 and Path(resume_from_checkpoint, ADAPTER_FILE).is_file():
            active = target.active_adapters[0]
            target.load_adapter(resume_from_checkpoint, active, is_trainable=True)
            target.set_adapter(active)
        for name, param in target.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()  # every process has written its part (its RNG state)
        if self.args.should_save:
            staged = self.checkpoint_store.staging / f"{PREFIX}{self.state.global_step}"
            final = self.checkpoint_store.commit(staged)
            if self.state.best_model_checkpoint == str(staged):
                self.state.best_model_checkpoint = str(final)
        self.accelerator.wait_for_everyone()


class RunCheckpoints:
    """The checkpoints of one training run, fingerprinted by ``params`` (the ``chat`` and ``train``
    sections), the ``data_files`` and the ``base_model`` folder (see ``fingerprint_inputs``), under
    ``root`` (``paths.checkpoints``; ``TRAIN_CHECKPOINT_DIR`` wins). Used as a context manager:
    the folder's lock goes when the run ends, or fails, in-process."""

    def __init__(self, root: str, params: dict, data_files: dict[str, str], base_model: str, keep: int | None):
        self.store = CheckpointStore(checkpoint_root(root), fingerprint_inputs(params, data_files, base_model),
                                     keep=keep)
        self.resume_from: Path | None = None  # the newest complete checkpoint, once find() has looked
        self.finished = False  # whether training had finished there (TRAIN_KEEP_CHECKPOINTS kept the last step)

    def __enter__(self) -> RunCheckpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.store.release()

    @property
    def output_dir(self) -> str:
        """The trainer's ``output_dir``: this configuration's folder."""
        return str(self.store.dir)

    @property
    def fingerprint(self) -> str:
        return self.store.id

    def find(self, sft_config) -> None:
        """Hold this configuration's folder and find the newest complete checkpoint, if any. Under
        torchrun or accelerate, the first process of all holds the folder and tidies it before the
        others look (machines share it when it is a mounted bucket)."""
        with sft_config.main_process_first(local=False, desc="checkpoint folder"):
            self.store.prepare(lock=sft_config.process_index == 0)
        self.resume_from = self.store.latest()
        if self.resume_from:
            log.info("resuming from %s (step %d)", self.resume_from, step_of(self.resume_from))
        else:
            log.info("no checkpoint of this configuration in %s: training from step 0", self.store.dir)
        self.finished = self.resume_from is not None and is_final(self.resume_from)

    def trainer_class(self, trainer_class: type) -> type:
        """``trainer_class`` writing its checkpoints into the store (see ``StagedCheckpoints``)."""
        return type("Resumable", (StagedCheckpoints, trainer_class), {"checkpoint_store": self.store})

    def train(self, trainer, callbacks: list) -> float:
        """Train, from the checkpoint to resume from when there is one; when it is the last step of
        a finished run (kept by TRAIN_KEEP_CHECKPOINTS), restore it instead, since Trainer would
        take one step too many. Returns the seconds spent training."""
        if not self.finished:
            resume = str(self.resume_from) if self.resume_from else None
            return trainer.train(resume_from_checkpoint=resume).metrics["train_runtime"]
        log.info("%s is the last step: training had finished, its adapter is written as is", self.resume_from)
        self.restore(trainer)
        for callback in callbacks:  # the dvclive series from the checkpoint's history
            callback.on_train_begin(trainer.args, trainer.state, trainer.control)
        return 0.0

    def restore(self, trainer) -> None:
        """Load the checkpoint of a run that had finished into ``trainer`` without training: its
        state and history, and its adapter weights. ``Trainer.train`` would take one step too many."""
        from transformers import TrainerState

        trainer.state = TrainerState.load_from_json(str(self.resume_from / TRAINER_STATE))
        trainer._load_from_checkpoint(str(self.resume_from))

    @property
    def resumed_from_step(self) -> int:
        return step_of(self.resume_from) if self.resume_from else 0

    def tokens_before_resume(self, trainer) -> int:
        """The input tokens counted in the checkpoint that ``trainer.train`` resumed from (0 for a
        run from step 0, or one that ``restore`` restored)."""
        return getattr(trainer, "_initial_num_input_tokens_seen", 0)

    def clean_up(self) -> None:
        """Delete this configuration's checkpoints, spent now that the adapter is written, unless
        TRAIN_KEEP_CHECKPOINTS keeps them."""
        if keep_after_success():
            log.info("kept %s (TRAIN_KEEP_CHECKPOINTS): a rerun resumes from its final checkpoint", self.store.dir)
        else:
            self.store.remove()
