"""Replay by distillation (src/distill.py, ``train.replay.loss: kl``) on a tiny random Llama.

The train stage with it, against replay by cross-entropy: test_model_stages.py."""

from __future__ import annotations

import pytest

from src.distill import kl_to_base, replay_rows, rows_for
from tests.modelkit import chatml_tokenizer, tiny_model_folder


def example(question: str, answer: str) -> dict:
    return {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": answer}]}


EXAMPLES = [example("What is the capital of France?", "Paris is the capital of France."),
            example("How many legs does a spider have?", "A spider has eight legs, two more than an insect.")]


@pytest.fixture(scope="module")
def tokenizer():
    return chatml_tokenizer()


def test_rows_for_takes_every_row_once_a_pass_in_a_seeded_order():
    drawn = [rows_for(step, 0, 1, 1, 5, seed=3)[0] for step in range(10)]
    assert sorted(drawn[:5]) == sorted(drawn[5:]) == list(range(5))
    assert drawn == [rows_for(step, 0, 1, 1, 5, seed=3)[0] for step in range(10)]  # the step decides
    assert drawn != [rows_for(step, 0, 1, 1, 5, seed=4)[0] for step in range(10)]
    # micro-batches of a step and several rows a batch continue the same sequence
    assert [i for micro in range(2) for i in rows_for(1, micro, 2, 2, 5, seed=3)] == drawn[4:8]


def test_replay_rows_mark_the_answer_and_its_end_of_turn(tokenizer):
    (row,) = replay_rows(tokenizer, EXAMPLES[:1], None)
    answer = [t for t, a in zip(row.input_ids, row.answer) if a]
    assert tokenizer.decode(answer).startswith("Paris is the capital of France.<|im_end|>")
    assert tokenizer.decode(row.input_ids[:row.answer.index(True)]).endswith("<|im_start|>assistant\n")
    prompt = row.answer.index(True)
    assert replay_rows(tokenizer, EXAMPLES[:1], prompt) == []  # no answer token left: left out
    (cut,) = replay_rows(tokenizer, EXAMPLES[:1], prompt + 2)
    assert sum(cut.answer) == 2 and cut.input_ids == row.input_ids[:prompt + 2]


def test_kl_is_zero_for_an_untouched_adapter_token_weighted_over_rows_and_trains_lora_only(tokenizer, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tiny_model_folder(tmp_path / "model", tokenizer)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    rows = replay_rows(tokenizer, EXAMPLES, None)
    assert len(rows[0].input_ids) != len(rows[1].input_ids)  # the batch is padded
    assert kl_to_base(model, rows, "cpu").item() == pytest.approx(0.0, abs=1e-6)  # LoRA B starts at zero

    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    kl = kl_to_base(model, rows, "cpu")
    assert kl.item() > 1e-3
    # padding changes nothing: the batch's KL is the answer-token-weighted mean of each row's
    counts = [sum(r.answer[1:]) for r in rows]
    alone = [kl_to_base(model, [r], "cpu").item() for r in rows]
    assert kl.item() == pytest.approx(sum(k * n for k, n in zip(alone, counts)) / sum(counts), rel=1e-4)
    # and it is the KL of the base's distribution from the adapted one, computed another way
    ids = torch.tensor([rows[0].input_ids])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits[0, :-1]
        with model.disable_adapter():
            base = model(input_ids=ids).logits[0, :-1]
    where = torch.tensor(rows[0].answer[1:])
    expected = torch.nn.functional.kl_div(torch.log_softmax(tuned[where], -1), torch.log_softmax(base[where], -1),
                                          log_target=True, reduction="batchmean")
    assert alone[0] == pytest.approx(expected.item(), rel=1e-4)

    model.zero_grad()
    kl.backward()
    for name, param in model.named_parameters():
        if "lora_" in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name


def test_kl_replay_refuses_more_than_one_process(tmp_path):
    from src.config import validate_params
    from tests.conftest import repo_params

    raw = repo_params()
    raw["train"]["replay"]["loss"] = "kl"
    raw["train"]["distributed"] = "ddp"
    with pytest.raises(Exception, match="replay.loss kl runs in one process"):
        validate_params(raw)
    raw["train"]["replay"]["loss"] = "ce"
    assert validate_params(raw).train.distributed == "ddp"
