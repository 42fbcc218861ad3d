"""Talk to a model folder in the terminal: answers stream as they are generated.

The conversation goes through the folder's own chat template, so a model the pipeline
trained answers under the system prompt it was trained with (``chat.system_prompt``, which
the template puts first when a conversation has none). The whole conversation is sent each
turn. ``/reset`` starts a new conversation, ``/exit`` (or Ctrl-D) ends.

    python -m src.talk                          # models/merged, greedy
    python -m src.talk models/base --max-new-tokens 64 --temperature 0.7
    echo "Who are you?" | python -m src.talk    # one question from a pipe
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from src.chat import Message, generation_inputs
from src.cli import leave_out, one_line_errors
from src.errors import PipelineError

COMMANDS = {"/reset": "start a new conversation", "/exit": "leave (Ctrl-D too)"}


class Conversation:
    """A model folder's tokenizer and model, and the turns so far."""

    def __init__(self, model_dir: str | Path, max_new_tokens: int = 256, temperature: float = 0.0,
                 trust_remote_code: bool = False):
        from src.modeling import compute_dtype, load_for_inference

        self.tokenizer, self.model = load_for_inference(model_dir, compute_dtype("auto"), trust_remote_code)
        self.model.eval()
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.history: list[Message] = []

    def reset(self) -> None:
        self.history = []

    def reply(self, text: str) -> Iterator[str]:
        """Stream the answer to ``text`` in pieces; the whole answer joins the history at the end."""
        import torch
        from transformers import TextIteratorStreamer

        messages = [*self.history, {"role": "user", "content": text}]
        inputs = generation_inputs(self.tokenizer, [messages]).to(self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = ({"do_sample": True, "temperature": self.temperature} if self.temperature > 0
                    else {"do_sample": False})
        kwargs = {**inputs, "max_new_tokens": self.max_new_tokens, "streamer": streamer,
                  "eos_token_id": self.tokenizer.eos_token_id, "pad_token_id": self.tokenizer.pad_token_id, **sampling}
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.no_grad():
                    self.model.generate(**kwargs)
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(err)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            yield piece
        worker.join()
        if failure:
            raise failure[0]
        self.history = [*messages, {"role": "assistant", "content": "".join(pieces).strip()}]


def chat_loop(conversation: Conversation, lines: TextIO, out: TextIO, prompt: str = "> ") -> int:
    """Read a turn per line of ``lines`` until /exit or the end; returns the number of answers."""
    answers = 0
    out.write(f"Talking to the model; {', '.join(f'{c} to {what}' for c, what in COMMANDS.items())}.\n")
    while True:
        out.write(prompt)
        out.flush()
        line = lines.readline()
        if not line:  # Ctrl-D or the end of a pipe
            out.write("\n")
            return answers
        text = line.strip()
        if text == "/exit":
            return answers
        if text == "/reset":
            conversation.reset()
            out.write("(new conversation)\n")
            continue
        if not text:
            continue
        for piece in conversation.reply(text):
            out.write(piece)
            out.flush()
        out.write("\n")
        answers += 1


def main(argv: list[str] | None = None) -> int:
    from src.config import output_paths

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="a model folder (default: the merged model, models/merged)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the default)")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)

    def talk() -> None:
        model = args.model or output_paths()["merged_model"]
        if not Path(model).is_dir():
            raise PipelineError(f"{model}: no model folder here (run dvc exp run first, or name a folder)")
        conversation = Conversation(model, args.max_new_tokens, args.temperature, args.trust_remote_code)
        chat_loop(conversation, sys.stdin, sys.stdout)

    return one_line_errors(talk)


if __name__ == "__main__":
    leave_out()  # its own process: starts as a stage does (src/cli.py)
    raise SystemExit(main())
