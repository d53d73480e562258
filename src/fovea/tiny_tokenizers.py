"""Tokenizers built offline in milliseconds, and tiny text-tower configs: no download, ever.

The bottom layer beside `fovea.hub`: recipes that build tiny random models (``lm_config``), vMLLM's
random text tower and the tests all take their tokenizers from here. `fovea.tiny` builds the tiny
models themselves on top of these.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<pad>"]

_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "You are a helpful assistant. Describe the image in detail.",
    "What colour is the square? The square is red. How many circles are there? There are three.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
    "USER: ASSISTANT: system user assistant",
]


def tiny_tokenizer(
    vocab_size: int = 320, image_token: bool = True, corpus: list[str] | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (never produces unknown tokens) with chat special tokens.

    ``<image>`` is added after the trained vocabulary (id `vocab_size`), so the tokenizer with and
    without it agree on every other id — as an original LLaVA tokenizer (no ``<image>``) and its
    transformers conversion (``<image>`` added) do. `corpus` adds training text (e.g. the answer
    words of a synthetic dataset, so each becomes one token).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS + list(corpus or []), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>"
    )
    if image_token:
        wrapped.add_tokens(["<image>"], special_tokens=True)
    return wrapped


# -- tiny text towers (vMLLM's question encoder) ---------------------------------------------------


def tiny_text_tower(model_type: str, width: int = 32) -> tuple[dict, object]:
    """(transformers config, tokenizer) of a random 2-layer CLIP or SigLIP text tower of `width`,
    with a tokenizer of the same kind (CLIP's BPE, SigLIP's SentencePiece) built offline."""
    tokenizer = _tiny_clip_tokenizer() if model_type == "clip_text_model" else _tiny_siglip_tokenizer()
    config = {
        "model_type": model_type,
        "vocab_size": len(tokenizer),
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    if model_type == "clip_text_model":
        config["hidden_act"] = "quick_gelu"
        tokenizer.model_max_length = 77  # CLIP's context, as the hub tokenizer says
    return config, tokenizer


def _tiny_clip_tokenizer():
    """CLIP's tokenizer class over single characters (no merges), EOS the highest id as in CLIP."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(vocab=vocab, merges=[])


def _tiny_siglip_tokenizer():
    """SigLIP's tokenizer class over a SentencePiece unigram model trained on `_CORPUS`."""
    import io
    import tempfile
    from pathlib import Path

    import sentencepiece as spm
    from transformers import SiglipTokenizer

    model = io.BytesIO()
    words = [line.lower() for line in _CORPUS] * 4
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(words), model_writer=model, vocab_size=96, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        minloglevel=2,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spiece.model"
        path.write_bytes(model.getvalue())
        return SiglipTokenizer(vocab_file=str(path))


def tiny_sentencepiece_tokenizer(image_token: bool = True):
    """A Llama/Vicuna-kind tokenizer: a SentencePiece BPE model (byte fallback, ``▁`` word starts)
    trained offline on `_CORPUS`, read by transformers' ``LlamaTokenizer`` as a hub checkpoint's
    ``tokenizer.model`` is, with the chat special tokens and (optionally) ``<image>`` added."""
    import io
    import json
    import tempfile
    from pathlib import Path

    import sentencepiece as spm
    from transformers import AutoTokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4), model_writer=model, vocab_size=400, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        hard_vocab_limit=False, minloglevel=2,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "tokenizer.model").write_bytes(model.getvalue())
        config = {
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
        }
        (Path(folder) / "tokenizer_config.json").write_text(json.dumps(config))
        tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens([t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()], special_tokens=True)
    tokenizer.pad_token = "<pad>"
    if image_token:
        tokenizer.add_tokens(["<image>"], special_tokens=True)
    return tokenizer
