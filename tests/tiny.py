"""A tiny causal LM and tokenizer built in code (no download): a 2-layer Llama over a byte-level BPE
vocabulary trained on a few sentences, saved as a normal model folder with a ChatML chat template, so every
code path that loads "a model folder" can be tested in seconds."""

from __future__ import annotations

from pathlib import Path

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

TRAINING_TEXT = [
    "Tidepool listens on port 8740 by default. Change it with the port key in the server section.",
    "Version history is kept for 30 days. Trash is kept for 14 days.",
    "Hello, thanks for reaching out. Here are the steps. Best regards, the Tidepool support team.",
    "The passages do not say. I don't know. Cite the passages with [1] and [2].",
    "Question: Passages: answer only from the numbered passages below.",
]


def build_tiny_model(folder: Path, seed: int = 0, vocab_size: int = 384, hidden: int = 64, layers: int = 2) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRAINING_TEXT * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"),
                         bos_token_id=fast.convert_tokens_to_ids("<|endoftext|>"),
                         pad_token_id=fast.convert_tokens_to_ids("<|endoftext|>"), tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return folder
