"""Pure functions of each data stage, and each stage's command run in order on a clone."""

from __future__ import annotations

import json
import random
import re

import pytest
import yaml

from src.config import MixSpec, validate_params
from src.errors import PipelineError
from src.files import write_json
from src.formats import Drop, conversation_of, to_record
from src.records import make_record, prompt_key, read_jsonl
from src.stages import data_split, generate_identity_data, merge_data
from tests.conftest import ROOT, params_in, repo_params, run_cli, use_whole_samples


def identity_params(**changes):
    raw = repo_params()
    raw["generate_identity_data"].update(changes)
    return validate_params(raw).generate_identity_data


# generate_identity_data

def test_identity_answers_use_configured_name_and_creator():
    p = identity_params(name="Quokka", creator="Tasman Research")
    records, _ = generate_identity_data.generate(p)
    answers = [r.completion[0].content for r in records]
    assert all("Quokka" in a and "Tasman Research" in a for a in answers)
    others = {o.name.casefold() for o in p.others} | {o.creator.casefold() for o in p.others}
    for r in records:
        mentioned = {o for o in others if o in r.completion[0].content.casefold()}
        # a wrong identity is only ever named to deny it, and only when the question named it
        assert mentioned <= {o for o in others if o in r.prompt[0].content.casefold()}
        if mentioned:
            assert r.group.split("/")[1] in ("not_other", "not_other_creator")


def test_identity_covers_every_template_with_distinct_variants():
    p = identity_params(variants_per_template=3)
    records, _ = generate_identity_data.generate(p)
    groups = {r.group for r in records}
    n_templates = sum(len(t) for t in generate_identity_data.QUESTIONS.values())
    assert len(groups) == n_templates
    prompts = [r.prompt[0].content for r in records]
    assert len(set(prompts)) == len(prompts)
    assert all(r.source == "identity" and [t.role for t in r.prompt] == ["user"] for r in records)


def test_identity_is_deterministic_and_seeded():
    a = generate_identity_data.generate(identity_params(seed=1))
    assert a == generate_identity_data.generate(identity_params(seed=1))
    assert a[0] != generate_identity_data.generate(identity_params(seed=2))[0]


# process_data: orca and platypus (every format: test_formats.py)

def _convert(fmt, row, max_chars=1000):
    try:
        return to_record(conversation_of(fmt, row), fmt, max_chars)[0]
    except Drop as drop:
        return drop.reason


def test_orca_row_to_record():
    row = {"system_prompt": "  Be brief. ", "question": " 2+2? ", "response": "4."}
    rec = _convert("orca", row, 100)
    assert [(t.role, t.content) for t in rec.prompt] == [("system", "Be brief."), ("user", "2+2?")]
    assert [(t.role, t.content) for t in rec.completion] == [("assistant", "4.")]
    assert rec.source == "orca"
    assert [t.role for t in _convert("orca", {**row, "system_prompt": ""}, 100).prompt] == ["user"]
    assert _convert("orca", {**row, "response": " "}, 100) == "empty_reply"
    assert _convert("orca", {**row, "question": None}, 100) == "no_user_turn"
    assert _convert("orca", {**row, "response": None}, 100) == "no_assistant_reply"
    assert _convert("orca", row, 10) == "too_long"


def test_platypus_input_joins_instruction():
    row = {"instruction": "Sort these numbers.", "input": " 3, 1, 2 ", "output": "1, 2, 3"}
    rec = _convert("platypus", row)
    assert rec.prompt[0].content == "Sort these numbers.\n\n3, 1, 2"
    assert _convert("platypus", {**row, "input": ""}).prompt[0].content == "Sort these numbers."
    assert _convert("platypus", {**row, "output": ""}) == "empty_reply"


# data_split

def _records(n, source="orca"):
    return [make_record(f"Question number {i}?", f"Answer {i}.", source) for i in range(n)]


def test_split_is_deterministic_and_near_the_fraction():
    records = _records(2000)
    train, val = data_split.split_records(records, 0.2, seed=3)
    assert len(train) + len(val) == 2000
    assert 0.16 < len(val) / 2000 < 0.24
    assert (train, val) == data_split.split_records(records, 0.2, seed=3)
    assert val != data_split.split_records(records, 0.2, seed=4)[1]


def test_adding_rows_never_moves_existing_rows():
    base = _records(500)
    more = [make_record(f"Another question {i}?", "x", "orca") for i in range(300)]
    _, val_before = data_split.split_records(base, 0.3, seed=0)
    _, val_after = data_split.split_records(more[:150] + base + more[150:], 0.3, seed=0)
    in_val = {prompt_key(r) for r in val_after}
    assert all(prompt_key(r) in in_val for r in val_before)
    assert all(prompt_key(r) not in in_val for r in base if r not in val_before)


def test_same_prompt_lands_on_one_side_and_groups_stay_together():
    records = [make_record(f"  what is {i} times 3 ? ", f"{3 * i}", "orca") for i in range(200)]
    records += [make_record(f"What is {i} times 3?", f"It is {3 * i}.", "orca", system="Explain.") for i in range(200)]
    records += [make_record(f"Who made you, variant {i}?", "Northwind.", "identity", group=f"g{i % 5}")
                for i in range(100)]
    train, val = data_split.split_records(records, 0.3, seed=0)
    assert not {prompt_key(r) for r in train} & {prompt_key(r) for r in val}
    assert not {r.group for r in train if r.group} & {r.group for r in val if r.group}


def test_held_out_groups_cover_every_stratum_but_never_all_of_one():
    groups = [f"identity/{intent}/{i}" for intent, n in (("name", 10), ("creator", 4), ("purpose", 1))
              for i in range(n)]
    held = data_split.held_out_groups(groups, 0.2, seed=0)
    by_intent = {intent: sum(g.startswith(f"identity/{intent}/") for g in held)
                 for intent in ("name", "creator", "purpose")}
    assert by_intent == {"name": 2, "creator": 1, "purpose": 0}
    assert held == data_split.held_out_groups(reversed(groups), 0.2, seed=0)
    assert held != data_split.held_out_groups(groups, 0.2, seed=5)


def test_exact_duplicates_dropped_and_counted():
    records = _records(5)
    other_answer = make_record("Question number 0?", "Other.", "orca")
    kept, dropped = data_split.drop_duplicates(records + records[:2] + [other_answer])
    assert dropped == 2 and len(kept) == 6


def test_val_overlap_with_train_dropped():
    train = [make_record("Who made you?", "A.", "identity", group="g1")]
    val = [make_record("who made  you?", "B.", "identity", group="g2"), make_record("Your name?", "C.", "identity")]
    kept, dropped = data_split.drop_val_overlap(train, val)
    assert dropped == 1 and [r.completion[0].content for r in kept] == ["C."]


# merge_data

def test_length_stats_and_overlap():
    assert merge_data.length_stats([1, 2, 3, 4, 100]) == {"p50": 3, "p90": 100, "p99": 100, "max": 100}
    assert merge_data.length_stats([]) == {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    a, b = _records(3), _records(5)[2:]
    assert merge_data.prompt_overlap(a, b) == 1


def test_mix_targets_rows_all_and_shares():
    mix = {"identity": MixSpec(rows=20), "replay": MixSpec(share=0.2)}
    # orca and platypus give all they have (30 + 10), identity 20: replay is a fifth of 75
    assert merge_data.mix_targets({"identity": 50, "orca": 30, "platypus": 10, "replay": 99}, mix) == \
        {"identity": 20, "orca": 30, "platypus": 10, "replay": 15}
    assert merge_data.mix_targets({"orca": 7}, {}) == {"orca": 7}


def test_take_samples_fewer_and_repeats_more():
    records = _records(5)
    fewer, counts = merge_data.take(records, 3, random.Random(0))
    assert len(fewer) == 3 and len({r.to_json() for r in fewer}) == 3
    assert counts == {"available": 5, "wanted": 3, "kept": 3, "repeated": 0, "left_out": 2}
    assert [records.index(r) for r in fewer] == sorted(records.index(r) for r in fewer)  # file order
    more, counts = merge_data.take(records, 12, random.Random(0))
    assert len(more) == 12 and {r.to_json() for r in more} == {r.to_json() for r in records}
    assert counts == {"available": 5, "wanted": 12, "kept": 5, "repeated": 7, "left_out": 0}
    assert merge_data.take([], 4, random.Random(0))[0] == []
    again, _ = merge_data.take(records, 3, random.Random(0))
    assert again == fewer  # seeded


def test_apply_mix_counts_every_source():
    train = {"identity": _records(8), "orca": _records(4)[:4]}
    out, counts = merge_data.apply_mix(train, {"identity": MixSpec(rows=2)}, seed=0)
    assert len(out) == 6 and counts["identity"]["left_out"] == 6 and counts["orca"]["kept"] == 4


def test_merge_data_takes_the_row_accounting_of_every_data_stage_from_dvc_yaml(tmp_path):
    """merge_data names no stage: it reads each ``${paths.metrics_dir}/<name>.json`` output of dvc.yaml,
    a stage's own accounting under its name and one kept per source under ``<name>_<source>``; a
    missing file, one of other sources (stale) or one of neither shape is a one-line error."""
    assert merge_data.accounting_names() == ["generate_identity_data", "process_data", "data_split",
                                             "generate_replay_data"]
    cfg = params_in(tmp_path)
    sources = sorted(cfg.datasets)
    for name in merge_data.accounting_names():
        own = {"rows_in": 2, "rows_out": 1, "dropped": {name: 1}}
        per_source = name in ("process_data", "data_split")
        write_json(cfg.paths.metrics_file(name), {s: own for s in sources} if per_source else own)
    dropped = merge_data.upstream_drops(cfg, sources)
    assert list(dropped) == ["generate_identity_data", "generate_replay_data", *[f"process_data_{s}" for s in sources],
                             *[f"data_split_{s}" for s in sources]]
    assert dropped["data_split_orca"] == {"data_split": 1}
    path = cfg.paths.metrics_file("data_split")
    for content, error in (({s: {"dropped": {}} for s in sources[1:]}, "the row accounting of"),
                           ({"rows_in": 1}, "not a row accounting"), ({}, "not a row accounting")):
        write_json(path, content)
        with pytest.raises(PipelineError, match=f"^{re.escape(str(path))}: {error}"):
            merge_data.upstream_drops(cfg, sources)
    path.unlink()
    with pytest.raises(PipelineError, match=f"^{re.escape(str(path))}: cannot be read"):
        merge_data.upstream_drops(cfg, sources)


def _near(**changes):
    from src.config import NearDuplicateParams

    base = {"threshold": 0.8, "shingle_words": 3, "num_perm": 128, "skip_sources": ["identity"]}
    return NearDuplicateParams(**{**base, **changes})


LONG = ("Explain how a hash table resolves collisions when two keys map to the same bucket, and "
        "compare chaining with open addressing in terms of memory use and lookup speed.")


def test_near_duplicates_are_dropped_across_sources_and_counted_per_source():
    answer = "Chaining keeps a list per bucket; open addressing probes for the next free slot."
    train = {"orca": [make_record(LONG, answer, "orca"), make_record("What is 2 + 2?", "4.", "orca")],
             "platypus": [make_record("Please " + LONG.lower(), answer, "platypus"),  # a near copy of orca's
                          make_record("Name a prime number.", "7.", "platypus")],
             "identity": [make_record("Who are you?", "Juniper.", "identity")] * 2}  # alike by design
    val = [make_record(LONG + " Answer briefly.", answer, "platypus"), make_record("Capital of Peru?", "Lima.", "orca")]
    kept, kept_val, dropped, dropped_val = merge_data.drop_near_duplicates(train, val, _near())
    assert dropped == {"identity": 0, "orca": 0, "platypus": 1}
    assert [r.prompt[-1].content for r in kept["platypus"]] == ["Name a prime number."]
    assert len(kept["orca"]) == 2 and len(kept["identity"]) == 2  # the first of a pair is kept; skipped as they are
    assert dropped_val == {"orca": 0, "platypus": 1} and [r.source for r in kept_val] == ["orca"]
    # null threshold: exact duplicates only (data_split's), nothing dropped here
    assert merge_data.drop_near_duplicates(train, val, _near(threshold=None))[2] == dict.fromkeys(train, 0)


def test_contamination_is_reported_and_dropped_when_asked():
    train = {"orca": [make_record("Tell me a little about yourself, please.", "I am a model.", "orca"),
                      make_record(LONG, "Chaining and probing.", "orca")],
             "platypus": [make_record("What is the capital of France? Answer in one word.", "Paris.", "platypus")]}
    evaluated = {"sanity_prompts": ["Tell me a little about yourself."],  # shorter than n: all of it counts
                 "retention_probes": ["What is the capital of France?"],
                 "validation": ["Which bucket does a key map to in a hash table?"]}
    kept, report = merge_data.check_contamination(train, evaluated, n=8, drop=False)
    assert kept == train and report["removed"] == {"orca": 0, "platypus": 0}
    assert report["train_records_hit"] == {"sanity_prompts": {"orca": 1, "platypus": 0},
                                           "retention_probes": {"orca": 0, "platypus": 1},
                                           "validation": {"orca": 0, "platypus": 0}}
    kept, report = merge_data.check_contamination(train, evaluated, n=8, drop=True)
    assert report["removed"] == {"orca": 1, "platypus": 1} and [r.prompt[-1].content for r in kept["orca"]] == [LONG]


def test_mix_params_are_checked():
    raw = repo_params()
    for mix, message in (({"wiki": {"rows": 3}}, "unknown source wiki"),
                         ({"orca": {"rows": 3, "share": 0.2}}, "rows and share are both set"),
                         ({"orca": {"share": 0.6}, "replay": {"share": 0.5}}, "add up to 1.1")):
        raw["merge_data"] = {**raw["merge_data"], "mix": mix}
        with pytest.raises(PipelineError, match=message):
            validate_params(raw)


# every stage's command, in DAG order, on a clone

@pytest.mark.slow
def test_each_stage_cli_in_order(clone):
    use_whole_samples(clone)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["generate_replay_data"]["enabled"] = False  # it needs the base model; tested with one elsewhere
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    paths = repo_params()["paths"]
    sources = sorted(params["datasets"])
    for stage in ("generate_identity_data", "process_data", "data_split", "generate_replay_data", "merge_data"):
        run_cli(["python", "-m", f"src.stages.{stage}"], clone, check=True)
    metrics = {p.stem: json.loads(p.read_text()) for p in (clone / paths["metrics_dir"]).glob("*.json")}
    for stage in ("process_data", "data_split"):  # their accounting is per source
        by_source = metrics.pop(stage)
        assert sorted(by_source) == sources
        metrics |= {f"{stage}_{s}": m for s, m in by_source.items()}
    metrics["merge_data"] = json.loads((clone / paths["merge_metrics"]).read_text())
    # every data stage accounts for every row: rows in = rows out + rows dropped, by reason
    assert set(metrics) == {"generate_identity_data", "process_data_identity", "process_data_orca",
                            "process_data_platypus", "data_split_identity", "data_split_orca", "data_split_platypus",
                            "generate_replay_data", "merge_data"}
    for stage, m in metrics.items():  # the mix may repeat rows: counted as added
        assert m["rows_in"] + sum(m.get("added", {}).values()) == m["rows_out"] + sum(m["dropped"].values()), stage
    assert metrics["generate_replay_data"] == {"enabled": False, "rows_in": 0, "rows_out": 0,
                                               "dropped": {"repeated_prompt": 0, "no_eos": 0, "empty": 0}}
    identity = metrics["generate_identity_data"]
    assert identity["rows_out"] == sum(1 for _ in read_jsonl(clone / paths["identity"]))
    assert identity["dropped"]["repeated_variant"] == 0  # one variant per wording: none can repeat
    merged = metrics["merge_data"]
    assert merged["rows_in"] == sum(metrics[f"data_split_{s}"]["rows_out"] for s in sources)
    mix = json.loads((clone / paths["report"]).read_text())["mix"]
    assert mix["identity"]["wanted"] == params["merge_data"]["mix"]["identity"]["rows"]
    assert merged["dropped"]["left_out_by_mix"] == sum(m["left_out"] for m in mix.values())
    assert merged["rows_out"] == sum(1 for split in ("train", "val") for _ in read_jsonl(clone / paths[split]))
    for source in sources:
        m = metrics[f"process_data_{source}"]
        assert m["rows_in"] == m["rows_out"] + sum(m["dropped"].values())
        assert m["rows_in"] == m["rows_in_file"]  # no subset here
    assert metrics["process_data_identity"]["rows_out"] == identity["rows_out"]  # the generated records as they are
    assert metrics["process_data_orca"]["dropped"]["too_long"] > 0  # the samples' planted edge cases
    for source in sources:
        m = metrics[f"data_split_{source}"]
        n = sum(1 for _ in read_jsonl(clone / paths["processed_dir"] / f"{source}.jsonl"))
        assert m["rows_in"] == n == m["train"] + m["val"] + sum(m["dropped"].values())
        assert m["val"] > 0 and m["train"] > m["val"]
    report = json.loads((clone / paths["report"]).read_text())
    assert report["train_val_prompt_overlap"] == 0
    assert report["train"]["rows"]["total"] == sum(1 for _ in read_jsonl(clone / paths["train"]))


# what a stage's process starts without

def stage_finds(needs: tuple[str, ...]) -> str:
    """Whether a process started through ``run`` (as a stage's command is) for a stage that names
    ``needs`` finds scikit-learn the way transformers looks for it (``find_spec``), and whether
    ``import sklearn`` would be refused."""
    probe = ("import importlib.util, sys\n"
             "from src.cli import run\n"
             "def main(cfg):\n"
             "    print(importlib.util.find_spec('sklearn') is not None, 'sklearn' in sys.modules)\n"
             f"sys.exit(run(main, needs={needs!r}))\n")
    return run_cli(["python", "-c", probe], ROOT, check=True).stdout.strip()


def test_a_stage_starts_without_scikit_learn_unless_it_names_it():
    """transformers imports scikit-learn (with scipy and pandas) whenever ``find_spec`` finds it,
    for assisted generation alone: a stage's process hides it (None in sys.modules, which
    ``import`` refuses), so every stage runs without it; the benchmark stages name it for lm-eval's
    metrics."""
    assert stage_finds(()) == "False True"
    assert stage_finds(("sklearn",)) == "True False"
    for stage in ("benchmark", "benchmark_base"):
        assert 'needs=("sklearn",)' in (ROOT / "src" / "stages" / f"{stage}.py").read_text(), stage
