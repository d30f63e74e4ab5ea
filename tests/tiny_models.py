"""Tiny random models of the architectures clinical NLP uses, saved as a user saves a model (save_pretrained + tokenizer).

Each has hidden size 32 and 2 layers, a word-level tokenizer over the bundled letters, and the trait of its family the
engine must handle: BERT's token_type_ids, RoBERTa's padding-offset positions and two-layer classification head,
DeBERTa-v2's relative attention and pooler, ModernBERT's fused Wqkv and alternating local (sliding-window) attention,
ELECTRA's discriminator checkpoint with a factorised embedding projection, DistilBERT's pre-classifier, GPT-2's Conv1D
attention and tied embeddings, BioGPT's scaled embeddings, LLaMA's missing pad token, Mistral's sliding window, Qwen2's
tied embeddings and attention biases with its byte-level BPE tokenizer (a pad token, left padding), Gemma-2's soft-capping and alternating sliding
window, Phi-3's fused qkv and gate_up projections. `build(arch, folder, texts)` writes one in well under a second.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

ENCODERS = ("bert", "roberta", "deberta-v2", "modernbert", "electra", "distilbert")
DECODERS = ("gpt2", "biogpt", "llama", "mistral", "qwen2", "gemma2", "phi3")
ARCHITECTURES = ENCODERS + DECODERS
H = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
SPECIAL = ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"]


def word_tokenizer(texts: list[str], size: int = 2000, *, encoder: bool):
    """A word-level fast tokenizer over `texts`: encoders get [CLS] ... [SEP], [PAD] and [MASK]; decoders only <s>/</s>
    and no pad token (as many decoders ship). Returns (tokenizer, vocabulary size)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = Counter(w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower()))
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for w, _ in words.most_common(size):
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if encoder:
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        special = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]"}
    else:
        special = {"bos_token": "<s>", "eos_token": "</s>"}
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", **special)
    return tok, len(vocab)


def qwen2_tokenizer(texts: list[str], size: int = 2000):
    """A byte-level BPE tokenizer trained on `texts` in Qwen2's own class (transformers loads any qwen2 model's tokenizer
    as Qwen2Tokenizer, whatever the folder names), with its <|endoftext|> pad token and left padding as Qwen ships it."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tk.train_from_iterator(
        texts, trainers.BpeTrainer(vocab_size=size, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet, show_progress=False)
    )
    bpe = json.loads(tk.to_str())["model"]
    tok = Qwen2Tokenizer(
        vocab=bpe["vocab"],
        merges=[tuple(m) for m in bpe["merges"]],
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        padding_side="left",
    )
    return tok, len(tok)


def _config_and_class(arch: str, vocab: int):
    """(config, model class) of one architecture: encoders as a masked-LM (or ELECTRA discriminator) checkpoint, decoders
    as a causal LM, as they are published."""
    import transformers as tf

    enc = {"vocab_size": vocab, "pad_token_id": 1, "max_position_embeddings": 128, **H}
    dec = {"vocab_size": vocab, "bos_token_id": 5, "eos_token_id": 6, "pad_token_id": None, "max_position_embeddings": 256, **H}
    table = {
        "bert": (tf.BertConfig(**enc, type_vocab_size=2), tf.BertForMaskedLM),
        "roberta": (tf.RobertaConfig(**enc, type_vocab_size=1), tf.RobertaForMaskedLM),
        "deberta-v2": (
            tf.DebertaV2Config(**enc, relative_attention=True, position_buckets=16, pos_att_type=["p2c", "c2p"], type_vocab_size=0),
            tf.DebertaV2ForMaskedLM,
        ),
        "modernbert": (
            tf.ModernBertConfig(
                **{**enc, "pad_token_id": 1, "cls_token_id": 2, "sep_token_id": 3, "bos_token_id": 2, "eos_token_id": 3},
                global_attn_every_n_layers=2,
                local_attention=8,
            ),
            tf.ModernBertForMaskedLM,
        ),
        "electra": (tf.ElectraConfig(**enc, embedding_size=16), tf.ElectraForPreTraining),
        "distilbert": (
            tf.DistilBertConfig(
                vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64, pad_token_id=1, max_position_embeddings=128
            ),
            tf.DistilBertForMaskedLM,
        ),
        "gpt2": (
            tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256, bos_token_id=5, eos_token_id=6),
            tf.GPT2LMHeadModel,
        ),
        "biogpt": (tf.BioGptConfig(**dec), tf.BioGptForCausalLM),
        "llama": (tf.LlamaConfig(**dec, num_key_value_heads=2), tf.LlamaForCausalLM),
        "mistral": (tf.MistralConfig(**dec, num_key_value_heads=2, sliding_window=16), tf.MistralForCausalLM),
        "qwen2": (
            tf.Qwen2Config(**dec, num_key_value_heads=2, tie_word_embeddings=True, use_sliding_window=False),
            tf.Qwen2ForCausalLM,
        ),
        "gemma2": (
            tf.Gemma2Config(
                **dec, num_key_value_heads=2, head_dim=8, sliding_window=16, attn_logit_softcapping=50.0, final_logit_softcapping=30.0
            ),
            tf.Gemma2ForCausalLM,
        ),
        "phi3": (tf.Phi3Config(**dec, num_key_value_heads=2), tf.Phi3ForCausalLM),
    }
    return table[arch]


def build(arch: str, folder: Path, texts: list[str], dtype: str | None = None) -> Path:
    """A tiny random `arch` model with its tokenizer, saved in `folder` as save_pretrained writes it (in `dtype`, a torch
    dtype name, when given). Seeded: the same weights every session."""
    import torch

    torch.manual_seed(0)
    if arch == "qwen2":
        tok, vocab = qwen2_tokenizer(texts)
    else:
        tok, vocab = word_tokenizer(texts, encoder=arch in ENCODERS)
    config, cls = _config_and_class(arch, vocab)
    net = cls(config)
    if dtype:
        net = net.to(getattr(torch, dtype))
    net.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
