"""The libraries' private names that src/ relies on are still there, in the shape the code uses,
in the installed (pinned: requirements.txt) versions. A library may change any of them in any
release: an upgrade that removes or reshapes one fails here, naming it and the file that uses
it, rather than in a training run, or silently (an override the library no longer calls).
No model loads: the libraries are imported and their code read.

PEFT, accelerate and dvclive are used through their public API only.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

import pytest

from tests.conftest import ROOT


@dataclass(frozen=True)
class Private:
    """A library name that is not public API, and how src/ uses it."""

    holder: str  # the module, or "module:Class", that holds it
    name: str
    used_in: str  # the file of src/ that uses it
    params: tuple | None = None  # a callable's parameters as the code calls or overrides it ("..." ends a prefix)
    used_by: str | None = None  # a method of the class (function of the module) whose code must still name it
    instance: bool = False  # set on instances by the class's own code, so not an attribute of the class

    @property
    def where(self) -> str:
        return self.holder.replace(":", ".")


PRIVATE = [
    # Checkpoints staged and committed, and a finished run restored (src/checkpoints.py overrides these).
    Private("transformers:Trainer", "_get_output_dir", "src/checkpoints.py", params=("self", "trial"),
            used_by="_save_checkpoint"),
    Private("transformers:Trainer", "_save_checkpoint", "src/checkpoints.py", params=("self", "model", "trial"),
            used_by="_maybe_log_save_evaluate"),
    Private("transformers:Trainer", "_load_from_checkpoint", "src/checkpoints.py",
            params=("self", "resume_from_checkpoint", "model"), used_by="train"),
    Private("transformers:Trainer", "_initial_num_input_tokens_seen", "src/checkpoints.py",
            used_by="_inner_training_loop", instance=True),
    # The replay KL logged beside TRL's own metrics.
    Private("trl:SFTTrainer", "_metrics", "src/distill.py", used_by="log", instance=True),
    # TRL's fused LM head scoring the labelled positions only (src/throughput.py replaces the choice).
    Private("trl.trainer.utils", "_use_triton", "src/throughput.py", params=("device",), used_by="add_fused_lm_head"),
    # Progress bars closed before a one-line error.
    Private("tqdm:tqdm", "_instances", "src/cli.py"),
    # Not underscored, but taken from a library's internal module rather than its public API.
    Private("trl.data_utils", "common_prefix_length", "src/chat.py", params=("ids", "other_ids")),
    Private("transformers.integrations.flex_attention", "flex_attention_forward", "src/throughput.py",
            params=("module", "query", "key", "value", "attention_mask", ...)),
    Private("transformers.modeling_utils", "ALL_ATTENTION_FUNCTIONS", "src/throughput.py"),
]


def holder_of(use: Private):
    module, _, cls = use.holder.partition(":")
    found = importlib.import_module(module)
    return getattr(found, cls) if cls else found


def problem(use: Private) -> str | None:
    """What no longer matches how src/ uses ``use``, or None."""
    holder = holder_of(use)
    if use.instance:
        if f"self.{use.name} =" not in inspect.getsource(holder):
            return f"{use.where} no longer sets it"
    elif not hasattr(holder, use.name):
        return "it is gone"
    if use.params is not None:
        got = tuple(inspect.signature(getattr(holder, use.name)).parameters)
        wanted = use.params[:-1] if use.params[-1] is ... else use.params
        if (got[:len(wanted)] if use.params[-1] is ... else got) != wanted:
            return f"its parameters are ({', '.join(got)}), where the code has ({', '.join(wanted)})"
    if use.used_by:
        caller = getattr(holder, use.used_by, None)
        if caller is None or use.name not in inspect.getsource(caller):
            return f"{use.where}.{use.used_by} no longer uses it, so the code's use of it has no effect"
    return None


@pytest.mark.parametrize("use", PRIVATE, ids=lambda use: f"{use.where}.{use.name}")
def test_private_library_names_the_code_uses_are_there(use):
    assert use.name in (ROOT / use.used_in).read_text(encoding="utf-8"), \
        f"{use.used_in} no longer uses {use.name}: take it off this list"
    found = problem(use)
    assert found is None, (f"{use.where}.{use.name}, which {use.used_in} uses: {found}. A library upgrade "
                           f"removed or changed this private name; update {use.used_in} for the new version, "
                           "or keep the version pinned in requirements.txt")
