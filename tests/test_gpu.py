"""The GPU profile's code path on a CUDA machine: 4-bit QLoRA in bf16 with the paged optimizer,
stopped and resumed from its checkpoint, then merge, sanity check and evaluation on the GPU.

Skipped without CUDA (CI has none). On a GPU machine:
    python -m pytest tests/test_gpu.py -s
It prints peak GPU memory and the resumed-vs-uninterrupted adapter difference.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import sys
import types
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU_SFT = {"max_steps": 12, "per_device_train_batch_size": 8, "learning_rate": 2.0e-3,
           "optim": "paged_adamw_32bit", "gradient_checkpointing": True, "save_steps": 4,
           "save_total_limit": 2, "logging_steps": 1, "eval_steps": 6, "max_length": 256}


def without_dvclive() -> None:
    """A bare CUDA image may lack dvc/dvclive (heavy, CPU-only code that the CPU tests cover);
    there, training logs go to a stand-in so the GPU path can still be checked."""
    try:
        importlib.import_module("dvclive").Live
        return
    except (ImportError, AttributeError):  # not installed (the repository's dvclive/ folder alone is no package)
        pass
    module = types.ModuleType("dvclive")
    module.__spec__ = importlib.machinery.ModuleSpec("dvclive", None)

    class StandIn:
        def __init__(self, folder, *args, **kwargs):
            self.folder, self.step, self.summary = Path(folder), 0, {}

        def log_metric(self, *args, **kwargs): ...

        def make_summary(self):
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "metrics.json").write_text(json.dumps(self.summary))

        def end(self): ...

    module.Live = StandIn
    sys.modules["dvclive"] = module
    print("dvclive is not installed: training metrics go to a stand-in")


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    from src.stages import train
    from tests.modelkit import QLORA, prepared

    without_dvclive()
    _, cfg = prepared(tmp_path_factory.mktemp("gpu"), sft=GPU_SFT, train={"quantization": QLORA})
    torch.cuda.reset_peak_memory_stats()
    trainer = train.main(cfg)
    peak = torch.cuda.max_memory_allocated() / 2**20
    print(f"\n{torch.cuda.get_device_name()}: QLoRA reference run, peak GPU memory {peak:.0f} MiB")
    return cfg, trainer


def adapter(cfg) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(cfg.paths.adapter) / "adapter_model.safetensors")


def test_qlora_trains_in_bf16_with_the_paged_optimizer(gpu_run):
    import bitsandbytes as bnb

    cfg, trainer = gpu_run
    assert trainer.args.bf16 and not trainer.args.use_cpu
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper
    assert isinstance(optimizer, bnb.optim.optimizer.Optimizer8bit) and optimizer.is_paged
    four_bit = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and all(m.weight.quant_type == "nf4" for m in four_bit)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]


def test_stopped_qlora_run_resumes_to_the_same_adapter(gpu_run, monkeypatch):
    from transformers import Trainer

    from src.stages import train

    cfg, first = gpu_run
    reference = adapter(cfg)
    # the noise floor: a second uninterrupted run (GPU kernels need not be bit-reproducible)
    again = train.main(cfg)
    repeat = adapter(cfg)
    original = Trainer.training_step

    def stop(self, *args, **kwargs):
        if self.state.global_step >= 6:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "training_step", stop)
        with pytest.raises(KeyboardInterrupt):
            train.main(cfg)
    resumed_trainer = train.main(cfg)
    resumed = adapter(cfg)
    def gap(a: dict, b: dict) -> float:
        return max((a[k].float() - v.float()).abs().max().item() for k, v in b.items())

    def losses(t) -> list[float]:
        return [round(h["loss"], 5) for h in t.state.log_history if "loss" in h]

    diff, floor = gap(resumed, reference), gap(repeat, reference)
    print(f"resumed at step 4 of 12: adapter max abs difference {diff:.3g}; two uninterrupted runs "
          f"differ by {floor:.3g}\nlosses: {losses(first)}\nrepeat: {losses(again)}\n"
          f"resumed: {losses(resumed_trainer)}")
    assert resumed_trainer.state.global_step == 12
    assert diff <= max(2 * floor, 1e-6)


def test_merge_sanity_check_and_evaluate_on_gpu(gpu_run):
    from src.stages import evaluate, evaluate_base, merge_model, sanity_check

    cfg, _ = gpu_run
    merge_model.main(cfg)
    sanity_check.main(cfg)
    evaluate_base.main(cfg)
    metrics = evaluate.main(cfg)
    assert metrics["finetuned"]["val_loss"] < metrics["base"]["val_loss"]
