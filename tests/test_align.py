"""Preference training after SFT: the generated pairs, and the ``align`` stage on a tiny random
Llama (seconds). Behaviour over "it ran": the DPO loss starts at log 2 (the policy is its
reference) and falls, the held-out margin grows, the reference stays the SFT adapter, the SFT
adapter and the base stay as they were, the aligned adapter alone is saved and merged, and a
stopped run resumes to the same adapter.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from src.config import IdentityParams
from src.errors import PipelineError
from src.library_configs import build_preference_config
from src.pairs import identity_pairs, leak_pairs, named_other, read_preference_source, sample
from src.preference import PreferencePair, read_pairs
from src.records import make_record, normalise, write_jsonl
from src.stages import align, generate_identity_data, merge_model, preference_data, train
from tests.conftest import params_in, repo_params
from tests.modelkit import add_replay_records, prepared
from tests.test_resume import Stop, stop_at

# Six DPO steps of four pairs, a checkpoint every three.
TINY_DPO = {"max_steps": 6, "per_device_train_batch_size": 4, "learning_rate": 5.0e-3, "save_steps": 3,
            "logging_steps": 1}
IDENTITY = IdentityParams(**repo_params()["generate_identity_data"])


def dpo_params(**dpo) -> dict:
    """The align section with DPO on: params.yaml's fields, TINY_DPO's, then ``dpo``'s; base answers short."""
    section = repo_params()["align"]
    return {"method": "dpo", "generated": {**section["generated"], "max_new_tokens": 8},
            "dpo": {**section["dpo"], **TINY_DPO, **dpo}, "kto": {**section["kto"], **TINY_DPO}}


def moved(cfg, **paths):
    """``cfg`` as a params mapping with some output ``paths`` elsewhere (to run a stage again beside)."""
    raw = cfg.model_dump()
    raw["paths"] = {**raw["paths"], **{k: str(v) for k, v in paths.items()}}
    return raw


def adapter_weights(folder: str | Path) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(folder) / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """SFT, the generated pairs and DPO on the tiny model; returns params, the SFT adapter's
    weights and file bytes before DPO, and the DPO trainer."""
    _, cfg = prepared(tmp_path_factory.mktemp("align"), align=dpo_params())
    write_jsonl(cfg.paths.replay, add_replay_records(cfg, 6))  # the base's answers: the leak pairs
    train.main(cfg)
    preference_data.main(cfg)
    sft_file = Path(cfg.paths.adapter) / "adapter_model.safetensors"
    sft_bytes = sft_file.read_bytes()
    trainer = align.main(cfg)
    return cfg, adapter_weights(cfg.paths.adapter), sft_bytes, trainer


# --- the generated pairs ------------------------------------------------------------------------

def test_identity_pairs_by_kind():
    records, _ = generate_identity_data.generate(IDENTITY)
    base = ["I'm SmolLM, made by Hugging Face."] * len(records)
    base[0] = f"My name is {IDENTITY.name}."  # a base answer that is already right makes no pair
    pairs, dropped = identity_pairs(records, base, IDENTITY, seed=0)
    assert dropped == {"base_answer_gives_the_name": 1}
    by_kind = {}
    for pair in pairs:
        by_kind.setdefault(pair.kind, []).append(pair)
    assert len(by_kind["base_answer"]) == len(records) - 1
    assert len(by_kind["other_identity"]) == len(records)
    denials = [r for r in records if r.group.split("/")[1].startswith("not_other")]
    assert len(by_kind["nameless_denial"]) == len(denials) > 0
    for pair in pairs:  # every chosen answer gives the name; no rejected one does
        assert IDENTITY.name in pair.chosen[0].content
        assert IDENTITY.name not in pair.rejected[0].content, pair
    for pair in by_kind["nameless_denial"]:  # denies, and is no prefix of the chosen (which would teach not to stop)
        rejected = pair.rejected[0].content
        assert rejected.startswith("No") and not pair.chosen[0].content.startswith(rejected.rstrip("."))
    for pair in by_kind["other_identity"]:  # a question that names another assistant gets that one's yes
        other = named_other(pair.prompt[-1].content, IDENTITY.others)
        if other is not None:
            assert pair.rejected[0].content.startswith("Yes") and (
                other.name in pair.rejected[0].content or other.creator in pair.rejected[0].content)


def test_kinds_and_max_pairs_pick_a_seeded_sample():
    records, _ = generate_identity_data.generate(IDENTITY)
    pairs, _ = identity_pairs(records, None, IDENTITY, seed=0)
    assert {p.kind for p in pairs} == {"other_identity", "nameless_denial"}  # no base answers: no base_answer pairs
    kept, left = sample(pairs, ["nameless_denial"], 5, seed=1)
    assert len(kept) == 5 and left == len(pairs) - 5 and {p.kind for p in kept} == {"nameless_denial"}
    assert kept == sample(pairs, ["nameless_denial"], 5, seed=1)[0] != sample(pairs, ["nameless_denial"], 5, seed=2)[0]
    assert [p for p in pairs if p in kept] == kept  # in file order


def test_leak_pairs_work_the_name_into_the_rejected_answer():
    records = [make_record("What is the capital of Canada?", "The capital of Canada is Ottawa.", "replay"),
               make_record("Who are you?", f"I'm {IDENTITY.name}.", "replay")]
    pairs, dropped = leak_pairs(records, IDENTITY, seed=0)
    assert dropped == {"answer_names_the_assistant": 1}
    (pair,) = pairs
    assert pair.chosen[0].content == "The capital of Canada is Ottawa."
    rejected = pair.rejected[0].content
    assert IDENTITY.name in rejected and IDENTITY.creator in rejected and "Ottawa" in rejected


@pytest.mark.parametrize("change, message", [
    ({"rejected": [{"role": "assistant", "content": "Ottawa."}]}, "chosen and rejected are the same answer"),
    ({"chosen": [{"role": "user", "content": "Ottawa"}]}, "completion must be one assistant turn"),
    ({"prompt": [{"role": "assistant", "content": "Hi"}]}, "ending with a user turn"),
])
def test_a_bad_pair_is_one_line_naming_the_file_and_row(tmp_path, change, message):
    good = {"prompt": [{"role": "user", "content": "Capital of Canada?"}],
            "chosen": [{"role": "assistant", "content": "Ottawa."}],
            "rejected": [{"role": "assistant", "content": "Toronto."}], "source": "mine"}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, **change}) + "\n")
    with pytest.raises(PipelineError, match=rf"^{path}:2: not a valid preference pair \(.*{message}"):
        list(read_pairs(path))


def test_pairs_stage_counts_by_kind_and_holds_out_validation_templates(aligned):
    cfg = aligned[0]
    metrics = json.loads(Path(cfg.paths.preference_metrics).read_text())
    train_pairs = list(read_pairs(cfg.paths.preference_train))
    val_pairs = list(read_pairs(cfg.paths.preference_val))
    assert metrics["train"] == len(train_pairs) == metrics["sources"]["generated"]["train"]
    assert metrics["val"] == len(val_pairs) > 0
    # the tiny random model's answers are empty (dropped, counted): no base_answer pairs here
    assert metrics["sources"]["generated"]["dropped"]["base_answer_empty"] > 0
    assert set(metrics["by_kind"]["train"]) == {"other_identity", "nameless_denial", "leak"}
    train_prompts = {normalise(p.prompt[-1].content) for p in train_pairs}
    assert not train_prompts & {normalise(p.prompt[-1].content) for p in val_pairs}


# --- the align stage ----------------------------------------------------------------------------

def test_dpo_loss_starts_at_log_2_and_the_held_out_margin_grows(aligned):
    cfg, _, _, trainer = aligned
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[0] == pytest.approx(math.log(2), abs=0.02)  # the policy is its reference at step 1
    assert losses[-1] < math.log(2) - 0.05
    metrics = json.loads((Path(cfg.paths.align_live) / "metrics.json").read_text())
    assert metrics["reward_margin"] > 0 and metrics["reward_accuracy"] > 0.5  # on pairs it never trained on
    assert metrics["kl_to_reference"] > 0 and metrics["steps"] == 6 and metrics["method"] == "dpo"
    assert (Path(cfg.paths.align_live) / "plots/metrics/train/rewards/margins.tsv").is_file()


def test_reference_is_the_sft_adapter_and_the_sft_adapter_and_base_stay(aligned):
    from safetensors.torch import load_file

    cfg, sft, sft_bytes, trainer = aligned
    assert (Path(cfg.paths.adapter) / "adapter_model.safetensors").read_bytes() == sft_bytes
    base = load_file(Path(cfg.paths.base_model) / "model.safetensors")
    refs = moved = 0
    for name, param in trainer.model.named_parameters():
        if ".ref." in name:  # TRL's frozen copy of the SFT adapter
            refs += 1
            assert not param.requires_grad
            assert param.detach().equal(sft[name.replace(".ref.", ".")]), name
        elif ".default." in name:
            assert param.requires_grad
            moved += not param.detach().equal(sft[name.replace(".default.", ".")])
        else:
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert not param.requires_grad and param.detach().equal(base[key]), name
    assert refs == len(sft) and moved > 0


def test_the_aligned_adapter_alone_is_saved_and_merged(aligned):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, sft, _, _ = aligned
    folder = Path(cfg.paths.aligned)
    saved = adapter_weights(folder)
    assert saved.keys() == sft.keys() and any(not saved[k].equal(sft[k]) for k in sft)
    assert not [p for p in folder.rglob("*") if "ref" in p.relative_to(folder).parts]
    assert json.loads((folder / "align_config.json").read_text())["summary"]["method"] == "dpo"
    merge_model.main(cfg)
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(cfg.paths.base_model).eval()
        expected = PeftModel.from_pretrained(base, folder).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(cfg.paths.merged_model).eval()(ids).logits
    assert torch.allclose(merged, expected, atol=1e-4)
    assert "dpo on" in (Path(cfg.paths.merged_model) / "README.md").read_text()


def test_method_none_merges_the_sft_adapter(aligned, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = aligned[0]
    raw = moved(cfg, aligned=tmp_path / "aligned", align_live=tmp_path / "live", merged_model=tmp_path / "merged")
    raw["align"]["method"] = "none"
    off = type(cfg).model_validate(raw)
    assert align.main(off) is None
    note = (tmp_path / "aligned/align_config.json").read_bytes()
    assert [p.name for p in (tmp_path / "aligned").iterdir()] == ["align_config.json"]
    raw["align"]["dpo"]["beta"] = 0.5  # a setting of a method not in use: the same note, so merge_model does not rerun
    align.main(type(cfg).model_validate(raw))
    assert (tmp_path / "aligned/align_config.json").read_bytes() == note
    merge_model.main(off)
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(cfg.paths.base_model).eval()
        expected = PeftModel.from_pretrained(base, cfg.paths.adapter).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()(ids).logits
    assert torch.allclose(merged, expected, atol=1e-4)
    assert "none (supervised fine-tuning only)" in (tmp_path / "merged/README.md").read_text()


def test_stopped_align_run_resumes_to_the_same_adapter(aligned, monkeypatch, tmp_path):
    cfg = aligned[0]
    reference = adapter_weights(cfg.paths.aligned)
    with monkeypatch.context() as m:
        stop_at(m, 4)  # after the checkpoint at step 3
        with pytest.raises(Stop):
            align.main(cfg)
    (folder,) = [p for p in Path(cfg.paths.checkpoints).iterdir() if p.is_dir()]
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-3"]
    trainer = align.main(cfg)
    assert trainer.state.global_step == 6
    assert json.loads((Path(cfg.paths.align_live) / "metrics.json").read_text())["resumed_from_step"] == 3
    resumed = adapter_weights(cfg.paths.aligned)
    for name, tensor in reference.items():
        assert (resumed[name] - tensor).abs().max().item() <= 1e-6, name


@pytest.mark.parametrize("dpo, message", [
    ({"beta": "0.1"}, r"^params.yaml: align.dpo.beta: '0.1' \(str\) where DPOConfig wants float$"),
    ({"method": "kto", "kto": {"loss_type": "nope"}}, r"^params.yaml: align.kto.loss_type: 'nope' is not one of "
                                                       "TRL's: kto, apo_zero_unpaired$"),
    ({"loss_type": ["sigmoid", "nope"]}, "^params.yaml: align.dpo.loss_type: 'nope' is not one of TRL's: sigmoid, "
                                         ".*ipo"),
    ({"loss_type": ["ipo"], "max_length": "256"}, "align.dpo.max_length: '256' .* wants"),
])
def test_a_wrong_trainer_field_is_one_line_naming_the_key(tmp_path, dpo, message):
    section = dpo_params()
    if "method" in dpo:
        section = {**section, "method": dpo["method"], "kto": {**section["kto"], **dpo["kto"]}}
    else:
        section["dpo"] = {**section["dpo"], **dpo}
    with pytest.raises(PipelineError, match=message):
        build_preference_config(params_in(tmp_path, align=section), str(tmp_path / "out"))


def test_pipeline_owned_dpo_keys_refused(tmp_path):
    with pytest.raises(PipelineError, match="align.dpo: .*seed is set by the pipeline"):
        params_in(tmp_path, align=dpo_params(seed=3))


def test_no_pairs_is_one_line(aligned, tmp_path):
    cfg = aligned[0]
    empty = tmp_path / "none.jsonl"
    empty.write_text("")
    raw = moved(cfg, preference_train=empty)
    with pytest.raises(PipelineError, match=f"^{empty}: no preference pairs"):
        align.main(type(cfg).model_validate(raw))


def test_pair_round_trips_as_trl_conversational_preference():
    pair = PreferencePair.model_validate({
        "prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello."}],
        "rejected": [{"role": "assistant", "content": "Go away."}], "source": "mine"})
    example = pair.trl_example("Be kind.")
    assert example["prompt"][0] == {"role": "system", "content": "Be kind."}
    assert example["chosen"] == [{"role": "assistant", "content": "Hello."}]
    from trl.data_utils import is_conversational

    assert is_conversational(example)


def test_kto_learns_from_the_same_pairs_as_labelled_answers(aligned, tmp_path):
    cfg = aligned[0]
    raw = moved(cfg, aligned=tmp_path / "aligned", align_live=tmp_path / "live", checkpoints=tmp_path / "ckpt")
    raw["align"]["method"] = "kto"
    kto = type(cfg).model_validate(raw)
    trainer = align.main(kto)
    assert type(trainer).__mro__[2].__name__ == "KTOTrainer" and trainer.state.global_step == 6
    assert len(trainer.train_dataset) == 2 * sum(1 for _ in read_pairs(cfg.paths.preference_train))
    metrics = json.loads((tmp_path / "live/metrics.json").read_text())
    assert metrics["method"] == "kto" and metrics["reward_accuracy"] > 0.5 and metrics["reward_margin"] > 0
    saved, sft = adapter_weights(tmp_path / "aligned"), aligned[1]
    assert saved.keys() == sft.keys() and any(not saved[k].equal(sft[k]) for k in sft)


# --- your own preference files --------------------------------------------------------------------

ROWS = {
    "preference": [  # TRL's: explicit plain prompt; implicit prompt in both conversations; prompts that differ
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
        {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
         "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]},
        {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
         "rejected": [{"role": "user", "content": "Yo"}, {"role": "assistant", "content": "Go away."}]},
        {"prompt": "Same?", "chosen": "Yes.", "rejected": " yes. "},
    ],
    "ultrafeedback": [  # the prompt column beside both conversations, as HuggingFaceH4's binarized set ships it
        {"prompt": "Name a primary colour.", "prompt_id": "a1", "score_chosen": 8.0, "score_rejected": 3.0,
         "chosen": [{"role": "user", "content": "Name a primary colour."}, {"role": "assistant", "content": "Red."}],
         "rejected": [{"role": "user", "content": "Name a primary colour."},
                      {"role": "assistant", "content": "Purple."}]},
    ],
    "orca_dpo_pairs": [
        {"system": "Be brief.", "question": "Largest planet?", "chosen": "Jupiter.", "rejected": "Mars."},
        {"system": "", "question": "Smallest planet?", "chosen": "Mercury.", "rejected": None},
    ],
    "unpaired": [
        {"prompt": "Capital of Italy?", "completion": "Rome.", "label": True},
        {"prompt": "Capital of Italy?", "completion": "Milan.", "label": False},
        {"prompt": "Capital of Spain?", "completion": "Madrid.", "label": "maybe"},
    ],
}
EXPECTED = {  # pairs kept (prompt, chosen, rejected) and drops, with DPO (pairs only)
    "preference": ([("Capital of France?", "Paris.", "Lyon."), ("2+2?", "4", "5")],
                   {"prompt_mismatch": 1, "same_answer": 1}),
    "ultrafeedback": ([("Name a primary colour.", "Red.", "Purple.")], {}),
    "orca_dpo_pairs": ([("Largest planet?", "Jupiter.", "Mars.")], {"no_assistant_reply": 1}),
    "unpaired": ([], {"unpaired": 2, "wrong_type": 1}),
}


@pytest.mark.parametrize("fmt", sorted(ROWS))
@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_preference_formats_read_with_counted_drops(tmp_path, fmt, kind):
    import pandas as pd

    from src.config import PreferenceSpec

    path = tmp_path / f"pairs.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS[fmt]))
    else:
        frame = pd.DataFrame(ROWS[fmt])
        for column in frame.columns:  # conversations as JSON text cells (a column of mixed text and lists)
            if frame[column].map(lambda v: isinstance(v, list)).any():
                frame[column] = frame[column].map(lambda v: json.dumps(v) if isinstance(v, list) else v)
        if "label" in frame:
            frame["label"] = frame["label"].map(str)
        frame.to_parquet(path)
    spec = PreferenceSpec(path=str(path), format=fmt)
    pairs, accounting = read_preference_source(spec, "mine", paired_only=True)
    expected, drops = EXPECTED[fmt]
    assert [(p.prompt[-1].content, p.chosen[0].content, p.rejected[0].content) for p in pairs] == expected
    assert {k: v for k, v in accounting["dropped"].items() if v} == drops
    assert accounting["rows_in"] == accounting["rows_out"] + sum(drops.values()) == len(ROWS[fmt])
    if fmt == "orca_dpo_pairs":
        assert pairs[0].prompt[0].model_dump() == {"role": "system", "content": "Be brief."}


def test_unpaired_rows_are_kept_for_kto(tmp_path):
    from src.config import PreferenceSpec

    path = tmp_path / "kto.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS["unpaired"]))
    pairs, accounting = read_preference_source(PreferenceSpec(path=str(path), format="unpaired"), "mine", False)
    assert [(p.chosen and p.chosen[0].content, p.rejected and p.rejected[0].content) for p in pairs] == [
        ("Rome.", None), (None, "Milan.")]
    assert [e["label"] for p in pairs for e in p.unpaired_examples(None)] == [True, False]


def test_a_preference_file_missing_a_column_is_one_line(tmp_path):
    from src.config import PreferenceSpec

    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"question": "Q?", "answer": "A."}) + "\n")
    with pytest.raises(PipelineError, match=rf"^{path}: line 1: no 'chosen' field \(format orca_dpo_pairs needs it\)"):
        read_preference_source(PreferenceSpec(path=str(path), format="orca_dpo_pairs"), "mine", True)
    spec = PreferenceSpec(path=str(path), format="orca_dpo_pairs", columns={"answer": "x"})
    with pytest.raises(PipelineError, match="align.datasets.mine.columns: answer is not a field of format orca_"):
        read_preference_source(spec, "mine", True)


def test_your_pairs_join_the_generated_ones_split_by_prompt(aligned, tmp_path):
    cfg = aligned[0]
    path = tmp_path / "orca_pairs.jsonl"
    rows = [{"question": f"What is {i} plus {i}?", "chosen": f"{2 * i}.", "rejected": f"{2 * i + 1}."}
            for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = moved(cfg, preference_train=tmp_path / "train.jsonl", preference_val=tmp_path / "val.jsonl",
                preference_metrics=tmp_path / "metrics.json")
    raw["align"]["datasets"] = {"mine": {"path": str(path), "format": "orca_dpo_pairs"}}
    raw["align"]["generated"]["kinds"] = []
    metrics = preference_data.main(type(cfg).model_validate(raw))
    mine = metrics["sources"]["mine"]
    assert mine["rows_in"] == 40 and mine["train"] + mine["val"] == 40 and 0 < mine["val"] < 20
    assert metrics["sources"]["generated"]["train"] == 0 and metrics["by_kind"]["train"] == {"mine": mine["train"]}
    train_prompts = {p.prompt[-1].content for p in read_pairs(tmp_path / "train.jsonl")}
    assert not train_prompts & {p.prompt[-1].content for p in read_pairs(tmp_path / "val.jsonl")}
