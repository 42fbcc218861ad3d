"""What the model is trained on, checked on real tokenizers: the supervised labels of a
collated batch are exactly the assistant's answer and its end-of-turn token (every assistant
turn of a multi-turn conversation, and nothing else), the prompt is the very token sequence
generation uses, and no sequence carries a second BOS. A system prompt, name and creator in
any script (an emoji outside the BMP, CJK, right-to-left text) reach the tokens as typed."""

from __future__ import annotations

import pytest

from src.chat import conversation, prompt_ids, supervised_ids, training_example, with_system_prompt
from src.modeling import load_tokenizer
from src.records import Record, Turn, make_record, read_jsonl
from src.stages import generate_identity_data
from src.training_data import tokenize
from tests.conftest import params_in
from tests.modelkit import chatml_tokenizer, llama2_tokenizer, smollm2_tokenizer, tiny_model_folder

RECORDS = [
    make_record("What is your name?", "I am Juniper, made by Northwind Labs.", "identity"),
    make_record("Add 2 and 3, then double it.", "2 + 3 = 5, and doubled that is 10.", "orca",
                system="You are a careful tutor."),
]
SYSTEM = "You are a helpful AI assistant."
# What a user may type in params: an emoji outside the BMP, CJK and right-to-left text.
UNICODE_SYSTEM = "You are 🦊 Lis. 你好，我是助手. مرحبا!"
# What a Jinja string literal escapes, and a zero-width joiner (👩‍💻) and a right-to-left mark.
ESCAPED = 'Say "hi", \'bye\', C:\\temp {{ braces }} %}\tand\r\nlines; 👩‍💻 \u200fمرحبا'
NAME, CREATOR = "Lis 🦊 小狐", "北风实验室 مختبر الرياح"
# Three user turns, three replies: the loss must fall on the three replies and nothing else.
REPLIES = ["Paris is the capital of France.", "About 2.1 million people live there.", "The Seine flows through it."]
MULTI_TURN = Record(prompt=[Turn(role="system", content="You answer briefly."),
                            Turn(role="user", content="What is the capital of France?"),
                            Turn(role="assistant", content=REPLIES[0]),
                            Turn(role="user", content="How many people live there?"),
                            Turn(role="assistant", content=REPLIES[1]),
                            Turn(role="user", content="Which river runs through it?")],
                    completion=[Turn(role="assistant", content=REPLIES[2])], source="support")


@pytest.fixture(scope="module", params=["smollm2", "llama2", "chatml_bpe"])
def model_dir(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    tok = {"smollm2": smollm2_tokenizer, "chatml_bpe": chatml_tokenizer,
           "llama2": lambda: llama2_tokenizer(tmp / "sp")}[request.param]()
    return tiny_model_folder(tmp / "model", tok)


@pytest.fixture(scope="module")
def batch(model_dir, tmp_path_factory):
    """The first collated training batch TRL builds from RECORDS and MULTI_TURN, tokenized as the
    train stage does, and the tokenizer."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(model_dir)
    args = SFTConfig(output_dir=str(tmp_path_factory.mktemp("out")), report_to="none", use_cpu=True,
                     bf16=False, per_device_train_batch_size=len(RECORDS) + 1, max_length=256)
    examples = tokenize(tokenizer, [training_example(r, SYSTEM) for r in [*RECORDS, MULTI_TURN]])
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args,
                         processing_class=tokenizer, train_dataset=Dataset.from_list(examples))
    rows = {tuple(trainer.train_dataset[i]["input_ids"]) for i in range(len(RECORDS) + 1)}
    assert len(rows) == len(RECORDS) + 1
    return tokenizer, next(iter(trainer.get_train_dataloader()))


def _rows(tokenizer, batch):
    """Per record: its full ids, prompt ids as generation builds them, and the batch row."""
    for record in RECORDS:
        messages = conversation(record.prompt, SYSTEM)
        full = tokenizer.apply_chat_template(messages + [t.model_dump() for t in record.completion],
                                             tokenize=True, return_dict=True)["input_ids"]
        for i, ids in enumerate(batch["input_ids"].tolist()):
            mask = batch["attention_mask"][i].tolist() if "attention_mask" in batch else [1] * len(ids)
            real = [t for t, m in zip(ids, mask) if m]
            if real == full:
                yield record, full, prompt_ids(tokenizer, messages), batch["labels"][i].tolist(), mask
                break
        else:
            raise AssertionError(f"no batch row is the chat template's rendering of {record.prompt}")


def test_prompt_is_the_generation_prompt(batch):
    tokenizer, b = batch
    for _, full, prompt, _, _ in _rows(tokenizer, b):
        assert full[:len(prompt)] == prompt


def test_labels_are_the_completion_and_eos_only(batch):
    tokenizer, b = batch
    eos = tokenizer.eos_token_id
    for record, full, prompt, labels, mask in _rows(tokenizer, b):
        real_labels = [lab for lab, m in zip(labels, mask) if m]
        supervised = [t for t in real_labels if t != -100]
        assert supervised == full[len(prompt):]
        assert eos in supervised, "the end-of-turn token must be a trained label"
        cut = supervised.index(eos)
        answer = tokenizer.decode(supervised[:cut], skip_special_tokens=False)
        assert answer.strip() == record.completion[0].content
        assert tokenizer.decode(supervised[cut + 1:]).strip() == ""  # only the template's newline may follow
        assert all(lab == -100 for lab, m in zip(labels, mask) if not m), "padding is never a label"


def test_every_assistant_turn_of_a_conversation_is_supervised_and_nothing_else(batch):
    tokenizer, b = batch
    messages = conversation(MULTI_TURN.prompt, SYSTEM) + [t.model_dump() for t in MULTI_TURN.completion]
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    rows = [i for i, ids in enumerate(b["input_ids"].tolist()) if ids[:len(full)] == full
            or [t for t, m in zip(ids, b["attention_mask"][i].tolist()) if m] == full]
    assert len(rows) == 1, "no batch row is the chat template's rendering of the conversation"
    labels = b["labels"][rows[0]].tolist()
    # the supervised tokens, as runs of consecutive positions
    runs, current = [], []
    for token in labels:
        if token == -100:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(token)
    runs += [current] if current else []
    assert len(runs) == len(REPLIES), [tokenizer.decode(r) for r in runs]
    eos = tokenizer.eos_token_id
    for run, reply in zip(runs, REPLIES):
        assert eos in run, "each reply ends with a trained end-of-turn token"
        cut = run.index(eos)
        assert tokenizer.decode(run[:cut], skip_special_tokens=False).strip() == reply
        assert tokenizer.decode(run[cut + 1:]).strip() == ""  # only the template's newline may follow
    supervised = tokenizer.decode([t for t in labels if t != -100])
    for turn in MULTI_TURN.prompt:
        if turn.role != "assistant":
            assert turn.content not in supervised


def test_exactly_one_bos_where_the_template_uses_one(batch):
    tokenizer, b = batch
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    uses_bos = tokenizer.bos_token is not None and rendered.startswith(tokenizer.bos_token) \
        and tokenizer.bos_token != "<|im_start|>"
    for _, full, _, _, _ in _rows(tokenizer, b):
        if uses_bos:
            assert full.count(tokenizer.bos_token_id) == 1
            assert full[0] == tokenizer.bos_token_id
        else:
            assert full[:2] != [full[0], full[0]]


def test_a_saved_template_puts_a_unicode_system_prompt_first_as_typed(model_dir, tmp_path):
    """The template training saves, read back from its folder: a conversation without a system
    turn gets ``chat.system_prompt`` exactly as typed (as if the turn were there) and tokenizes;
    the saved file shows it as typed, not as escapes."""
    user = [{"role": "user", "content": "Who are you?"}]
    for i, system in enumerate([UNICODE_SYSTEM, ESCAPED]):
        tokenizer = load_tokenizer(model_dir)
        tokenizer.chat_template = with_system_prompt(tokenizer.chat_template, system)
        tokenizer.save_pretrained(tmp_path / str(i))
        saved = load_tokenizer(tmp_path / str(i))
        render = lambda messages: saved.apply_chat_template(messages, tokenize=False)  # noqa: E731
        assert render(user) == render(conversation(user, system))
        assert system in saved.decode(prompt_ids(saved, user))
    assert UNICODE_SYSTEM in (tmp_path / "0" / "chat_template.jinja").read_text(encoding="utf-8")


def test_identity_records_keep_a_unicode_name_and_creator_through_tokenizing(model_dir, tmp_path):
    """generate_identity_data with a name and creator in three scripts: every answer holds both as
    typed, in the file and in the supervised tokens of training."""
    cfg = params_in(tmp_path, generate_identity_data={"name": NAME, "creator": CREATOR})
    generate_identity_data.main(cfg)
    records = list(read_jsonl(cfg.paths.identity))
    assert records and all(NAME in r.completion[0].content and CREATOR in r.completion[0].content
                           for r in records)
    tokenizer = load_tokenizer(model_dir)
    for record in records[:3]:
        example = supervised_ids(tokenizer, training_example(record, UNICODE_SYSTEM))
        labels = [t for t, m in zip(example["input_ids"], example["assistant_masks"]) if m]
        assert tokenizer.decode(labels, skip_special_tokens=True).strip() == record.completion[0].content
        assert UNICODE_SYSTEM in tokenizer.decode(example["input_ids"])
