from __future__ import annotations

import pytest

from src.errors import PipelineError
from src.records import make_record, normalise, prompt_key, read_jsonl, stable_hash, write_jsonl


def test_normalise_folds_case_width_and_space():
    assert normalise("  What\tIS   ２+２?\n") == "what is 2+2?"


def test_prompt_key_ignores_system_turn_and_spacing():
    a = make_record("What is  the capital of France?", "Paris.", "orca", system="Be brief.")
    b = make_record("what is the capital of france?", "It is Paris.", "platypus")
    c = make_record("What is the capital of Spain?", "Madrid.", "orca")
    assert prompt_key(a) == prompt_key(b) != prompt_key(c)


def test_make_record_omits_empty_system_turn():
    assert [t.role for t in make_record("q", "a", "orca").prompt] == ["user"]
    assert [t.role for t in make_record("q", "a", "orca", system="s").prompt] == ["system", "user"]


def test_stable_hash_depends_on_text_and_seed_only():
    assert stable_hash("abc", 0) == stable_hash("abc", 0)
    assert stable_hash("abc", 0) != stable_hash("abc", 1)
    assert 0 <= stable_hash("abc", 0) < 1


def test_jsonl_round_trip_keeps_unicode(tmp_path):
    records = [make_record("Translate 'thank you' into French.", "Merci — « merci ».", "orca", group="g")]
    path = tmp_path / "r.jsonl"
    assert write_jsonl(path, records) == 1
    assert "«" in path.read_text(encoding="utf-8")
    assert list(read_jsonl(path)) == records


def test_read_jsonl_names_the_broken_line(tmp_path):
    path = tmp_path / "r.jsonl"
    good = make_record("q", "a", "orca").to_json()
    path.write_text(f"{good}\n{good}\n{{\"prompt\": [\n")
    with pytest.raises(PipelineError, match=r"r\.jsonl:3: not a valid record"):
        list(read_jsonl(path))


def test_read_jsonl_refuses_unknown_role_and_invalid_utf8(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"prompt": [{"role": "robot", "content": "x"}], '
                    '"completion": [{"role": "assistant", "content": "y"}], "source": "s"}\n')
    with pytest.raises(PipelineError, match=r"r\.jsonl:1: .*prompt\.0\.role"):
        list(read_jsonl(path))
    path.write_bytes(b'{"prompt": "\xff"}\n')
    with pytest.raises(PipelineError, match=r"r\.jsonl:1: invalid UTF-8"):
        list(read_jsonl(path))
