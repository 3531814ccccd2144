"""A small CLIP-style word-level tokenizer for the toy world.

Written as vocab.json + merges.txt + configs so that ``transformers.CLIPTokenizer.from_pretrained``
loads it (transformers 5 ignores vocab_file= arguments). The BPE merges are *trained* on the word
list with the tokenizers library, which guarantees that every listed word encodes to exactly one
token (a hand-written merge chain per word can be blocked by another word's merges). The full
byte-level alphabet (with and without the end-of-word suffix) is kept, so any text still tokenizes.
"""
from __future__ import annotations

import json
from pathlib import Path

from .world import BACKGROUND_PHRASES, COLOURS, JOINERS, PREFIXES, SHAPES, SIZES, TEXTURES

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
PAD = EOS  # as in SD 1.x: padding with end-of-text
MAX_TOKENS = 40  # longest pretraining caption is 36 tokens with BOS/EOS; 77 would double text-encoder cost

_GRAMMAR_TEXT = " ".join(
    list(SHAPES) + list(COLOURS) + list(TEXTURES) + list(SIZES) + list(PREFIXES) + list(JOINERS)
    + list(BACKGROUND_PHRASES.values()) + ["a", "an", "and", "plain", "solid"]
)
# Words prompts may use beyond the pretraining grammar (their embeddings stay near initialisation
# unless they occur in captions; the grammar ones above do).
EXTRA_WORDS = """
the of in on at to with without next beside near behind under over above below left right top bottom
front back middle center corner between among and or is are it its this that there
photo picture image drawing painting oil rendering sketch cartoon watercolor pencil style art render
close up view shot portrait scene toy object objects thing things shape shapes sticker icon logo
one two three four five many several some big tiny little huge bright dark light colorful pale
black brown grey golden silver beach sea ocean sand water sky sun moon night day snow forest city
street room table floor wall tiled tile grass field park garden space desert mountain river
background foreground backdrop wearing holding sitting standing floating flying made pattern
sks asset concept
""".split()


def vocabulary_words() -> list[str]:
    """Every word that must be a single token, in a stable order."""
    seen: dict[str, None] = {}
    for w in _GRAMMAR_TEXT.split() + EXTRA_WORDS:
        seen.setdefault(w.lower(), None)
    return list(seen)


def build_tokenizer(out_dir: str | Path) -> Path:
    """Write the tokenizer folder and return its path. Deterministic."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    words = vocabulary_words()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = normalizers.Lowercase()
    # Same split as CLIPTokenizer: words without the "Ġ" space marker, then the byte-level alphabet.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=100_000, min_frequency=1, show_progress=False, initial_alphabet=alphabet,
        end_of_word_suffix="</w>", continuing_subword_prefix="", special_tokens=[],
    )
    tok.train_from_iterator([" ".join(words)] * 2, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    trained_vocab: dict[str, int] = model["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]

    # CLIP layout: byte alphabet, then alphabet + "</w>", then merged tokens, then the specials last.
    vocab: dict[str, int] = {}
    for ch in sorted(alphabet):
        vocab.setdefault(ch, len(vocab))
    for ch in sorted(alphabet):
        vocab.setdefault(ch + "</w>", len(vocab))
    for t, _ in sorted(trained_vocab.items(), key=lambda kv: kv[1]):
        vocab.setdefault(t, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)

    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": PAD}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_TOKENS, "do_lower_case": True,
              "add_prefix_space": False, "clean_up_tokenization_spaces": False, "errors": "replace", **special}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return out


def load_tokenizer(path: str | Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path))
