"""The train and align stages' dvclive metrics: transformers callbacks that add tokens/s to the training
logs and write the train/* and eval/* series (a resumed run's from the checkpoint's history on),
then the run's summary as metrics.json.

    live = open_live("dvclive/train", sft_config)  # None but in one process per machine
    callbacks = [Throughput(), LiveMetrics(live)]   # to the Trainer; then write_summary(live, summary)
"""

from __future__ import annotations

import os
import time

# The DVC Studio token under the name a cloud run passes it (sky-training.yaml keeps it from dvc
# exp run, which would write it into a git object); dvclive reads it as DVC_STUDIO_TOKEN.
STUDIO_TOKEN_ENV = "TRAIN_STUDIO_TOKEN"

LIVE_KEYS = ("loss", "learning_rate", "grad_norm", "tokens_per_second", "mean_token_accuracy", "replay_kl",
             "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")  # the last four: align's


class TrainerEvents:
    """transformers' ``TrainerCallback`` protocol: every ``on_*`` event a subclass does not define
    does nothing. Not a subclass of it, so that this module imports without transformers (which
    loads only after ``run`` has dropped the credentials and ``main`` has relaunched)."""

    def __getattr__(self, name: str):
        if name.startswith("on_"):
            return _ignore_event
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _ignore_event(*args, **kwargs) -> None:
    return None


class Throughput(TrainerEvents):
    """Adds tokens/s (of the non-padding tokens the model computed on) to every training log."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = (time.perf_counter(), state.num_input_tokens_seen)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        then, before = self.last
        if now > then:
            logs["tokens_per_second"] = round((tokens - before) / (now - then), 2)
        self.last = (now, tokens)


class LiveMetrics(TrainerEvents):
    """train/* and eval/* series in dvclive (``live``; None: nothing written), one row per logged
    optimizer step. A resumed run first writes the rows of the checkpoint's history, so the
    series stay whole."""

    def __init__(self, live):
        self.live = live

    def on_train_begin(self, args, state, control, **kwargs):
        if self.live is not None:
            for entry in state.log_history:
                self.record(entry, entry["step"])

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and self.live is not None:  # every process gets the logs, reduced over all of them
            self.record(logs, state.global_step)

    def record(self, logs: dict, step: int) -> None:
        prefix = "eval" if "eval_loss" in logs else "train" if "loss" in logs else None
        if prefix is None:  # the end-of-training summary: written by write_summary
            return
        self.live.step = step
        for key, value in logs.items():
            name = key.removeprefix("eval_")
            if name in LIVE_KEYS and isinstance(value, (int, float)):
                self.live.log_metric(f"{prefix}/{name}", value)
        self.live.sync()  # metrics.json, and DVC Studio's live view when DVC_STUDIO_TOKEN is set


def mean_train_loss(history: list[dict]) -> float | None:
    """Mean training loss over the logged steps (each log is the mean since the one before),
    from the trainer's history, so a resumed run reports the whole run's figure."""
    total = steps = 0
    last = 0
    for entry in history:
        if "loss" in entry:
            total += entry["loss"] * (entry["step"] - last)
            steps += entry["step"] - last
            last = entry["step"]
    return total / steps if steps else None


def open_live(folder: str, sft_config):
    """dvclive's writer in the first process of each machine, None in the others: DVC runs on
    every machine of a multi-node job and checks the outputs there. Only the first process of
    all posts live metrics to DVC Studio."""
    from dvclive import Live

    writer = sft_config.local_process_index == 0
    if os.environ.get(STUDIO_TOKEN_ENV):
        os.environ["DVC_STUDIO_TOKEN"] = os.environ.pop(STUDIO_TOKEN_ENV)
    if writer and sft_config.process_index != 0:
        os.environ["DVC_STUDIO_OFFLINE"] = "true"
    return Live(folder, dvcyaml=None, save_dvc_exp=False, report=None) if writer else None


def write_summary(live, summary: dict) -> None:
    """The summary as dvclive's metrics.json; closes ``live``."""
    for key, value in summary.items():
        if value is not None:
            live.summary[key] = value
    live.make_summary()
    live.end()
