"""The chat command: streamed answers equal greedy generation on the whole conversation so far,
``/reset`` forgets it, and the command line reads turns from stdin (a pipe) and ends cleanly."""

from __future__ import annotations

import io

import pytest

from src.chat import conversation
from src.generation import generate
from src.talk import Conversation, chat_loop
from tests.conftest import ROOT, run_cli
from tests.modelkit import chatml_tokenizer, tiny_model_folder

SYSTEM = "You are a helpful AI assistant."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from src.chat import with_system_prompt

    tokenizer = chatml_tokenizer()
    tokenizer.chat_template = with_system_prompt(tokenizer.chat_template, SYSTEM)  # as a trained folder has it
    return tiny_model_folder(tmp_path_factory.mktemp("talk") / "model", tokenizer)


def greedy(chat: Conversation, messages: list[dict]) -> str:
    return generate(chat.model, chat.tokenizer, [messages], chat.max_new_tokens, 1)[0].text


def test_answers_stream_and_carry_the_conversation(model_dir):
    chat = Conversation(model_dir, max_new_tokens=12)
    first = list(chat.reply("What is the capital of France?"))
    assert len(first) > 1, "the answer arrives in pieces"
    a1 = "".join(first).strip()
    # the same text greedy generation gives; the template put the system prompt first
    assert a1 == greedy(chat, conversation([{"role": "user", "content": "What is the capital of France?"}], SYSTEM))
    a2 = "".join(chat.reply("And of Spain?")).strip()
    two_turns = [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": a1},
                 {"role": "user", "content": "And of Spain?"}]
    assert a2 == greedy(chat, two_turns)
    assert [m["role"] for m in chat.history] == ["user", "assistant", "user", "assistant"]
    chat.reset()
    assert "".join(chat.reply("And of Spain?")).strip() == greedy(chat, [two_turns[-1]])
    assert len(chat.history) == 2


def test_loop_commands(model_dir):
    chat = Conversation(model_dir, max_new_tokens=4)
    out = io.StringIO()
    answers = chat_loop(chat, io.StringIO("Hello\n\n/reset\nHi\n/exit\nnever read\n"), out)
    assert answers == 2 and len(chat.history) == 2  # /reset emptied it before "Hi"
    assert "(new conversation)" in out.getvalue() and "never read" not in out.getvalue()


@pytest.mark.slow
def test_command_line_through_a_pipe(model_dir, tmp_path):
    proc = run_cli(["python", "-m", "src.talk", str(model_dir), "--max-new-tokens", "4"], ROOT,
                   input_text="Who are you?\n/reset\nWho are you?\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # a prompt before each line read, the last at the pipe's end; between them the answers
    _, first, reset, second, end = proc.stdout.split("> ")
    assert reset == "(new conversation)\n" and end == "\n"
    assert first == second and len(first) > 1  # the same question, fresh each time: the same answer
    missing = run_cli(["python", "-m", "src.talk", str(tmp_path / "nothing")], ROOT)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nothing'}: no model folder here " \
                                                       "(run dvc exp run first, or name a folder)"
