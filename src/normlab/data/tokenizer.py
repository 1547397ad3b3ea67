"""Subword tokenizers (HF ``tokenizers``), trained once on a train split and cached beside the data.

The same seven special tokens get ids 0..6 in every tokenizer, so task code can rely on
``pad_id == 0`` etc. whatever the kind or vocabulary size. A trained tokenizer is a plain
HF ``tokenizer.json`` string: the cache file, and what a checkpoint embeds so evaluation encodes
text with exactly the ids the model was trained on.

Long texts are encoded as a batch of line chunks (``split_corpus``) for speed. The chunk boundaries
are chosen where the byte-level pre-tokenizer always splits anyway, so for BPE the result is
identical to encoding the whole text at once (tested).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from normlab.data.sources import atomic_output
from normlab.errors import ConfigError
from normlab.typed_config import to_dataclass

log = logging.getLogger("normlab.data")

SPECIAL_TOKENS = ("[PAD]", "<unk>", "<bos>", "<eos>", "[CLS]", "[SEP]", "[MASK]")
# Checkpoints written before the pad token was named [PAD] (BERT's name) call it <pad>; same id.
_LEGACY_NAMES = {"[PAD]": ("<pad>",)}
KINDS = ("bpe", "unigram")
_FORMAT = 2  # bump when the training recipe changes, so stale caches are not reused
# Split after a single newline that follows a non-space and precedes a non-space: there the
# GPT-2 pre-tokenizer regex ends a token in both the chunk and the whole text.
_UNIGRAM_PENALTY_STEP = 1e-4  # tokenizers' UnigramTrainer: spacing of kept-char scores
_CHUNK_RE = re.compile(r"(?<=\S\n)(?=\S)")


@dataclass(frozen=True)
class TokenizerSettings:
    """The ``data.tokenizer`` config node."""

    kind: str = "bpe"  # "bpe" (byte-level BPE, lossless) or "unigram" (Metaspace)
    vocab_size: int = 2048
    lowercase: bool = False
    min_frequency: int = 2  # BPE only: a merge needs this many occurrences

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"data.tokenizer.kind: must be one of {', '.join(KINDS)}, got {self.kind!r}")
        floor = len(SPECIAL_TOKENS) + (256 if self.kind == "bpe" else 1)
        if not isinstance(self.vocab_size, int) or self.vocab_size <= floor:
            raise ConfigError(
                f"data.tokenizer.vocab_size: must be an integer > {floor} for kind={self.kind} "
                f"({len(SPECIAL_TOKENS)} special tokens"
                f"{' + 256 byte symbols' if self.kind == 'bpe' else ''}), got {self.vocab_size!r}"
            )
        if not isinstance(self.min_frequency, int) or self.min_frequency < 1:
            raise ConfigError(
                f"data.tokenizer.min_frequency: must be an integer >= 1, got {self.min_frequency!r}"
            )

    @classmethod
    def parse(cls, value: Any) -> TokenizerSettings:
        """Accept a dict / DictConfig / TokenizerSettings / None (defaults) from the config."""
        if isinstance(value, cls):
            return value
        return to_dataclass(cls, value, "data.tokenizer")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def split_corpus(text: str) -> list[str]:
    """Cut a long text into line chunks whose concatenated encodings equal the whole encoding."""
    return _CHUNK_RE.split(text)


class TextTokenizer:
    """Thin wrapper around ``tokenizers.Tokenizer`` with the ids the tasks need."""

    def __init__(self, tokenizer: Tokenizer, settings: TokenizerSettings) -> None:
        for i, tok in enumerate(SPECIAL_TOKENS):
            names = (tok, *_LEGACY_NAMES.get(tok, ()))
            if all(tokenizer.token_to_id(name) != i for name in names):
                raise ConfigError(
                    f"data.tokenizer: special token {tok} must have id {i}, got "
                    f"{tokenizer.token_to_id(tok)}; the tokenizer json is not a normlab tokenizer"
                )
        self._tok = tokenizer
        self.settings = settings

    pad_id = property(lambda self: 0)
    unk_id = property(lambda self: 1)
    bos_id = property(lambda self: 2)
    eos_id = property(lambda self: 3)
    cls_id = property(lambda self: 4)
    sep_id = property(lambda self: 5)
    mask_id = property(lambda self: 6)

    @property
    def vocab_size(self) -> int:
        """Actual size (can be below ``settings.vocab_size`` when the corpus is small)."""
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, no special tokens added."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts in parallel (Rust threads), skipping offset bookkeeping."""
        encs = self._tok.encode_batch_fast(texts, add_special_tokens=False)
        return [e.ids for e in encs]

    def encode_corpus(self, text: str) -> list[int]:
        """Encode a long text (a whole split) quickly; same ids as ``encode`` for BPE."""
        return [i for ids in self.encode_batch(split_corpus(text)) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with special tokens skipped; byte-level BPE round-trips exactly."""
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(i)

    def to_json(self) -> str:
        """A standard HF tokenizer.json string (what the cache file and checkpoints hold)."""
        return self._tok.to_str()

    @classmethod
    def from_json(cls, s: str, settings: TokenizerSettings | None = None) -> TextTokenizer:
        """Rebuild from ``to_json()``; settings are read back from the json when not given."""
        tok = Tokenizer.from_str(s)
        return cls(tok, settings or _infer_settings(json.loads(s), tok.get_vocab_size()))

    @property
    def digest(self) -> str:
        """Short content hash: keys caches of data encoded with exactly this tokenizer."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def train_or_load(
    settings: TokenizerSettings,
    texts: Callable[[], Iterable[str]],
    cache_dir: Path,
    data_fingerprint: str,
) -> TextTokenizer:
    """Load the cached tokenizer for (settings, data), or train it on ``texts()`` and cache it.

    ``data_fingerprint`` must change whenever the training text would (file hashes + split), so a
    cache hit is always the tokenizer this data and these settings produce. Training is
    deterministic, so two processes racing here write the same bytes (the rename is atomic).
    """
    key_src = json.dumps([_FORMAT, settings.as_dict(), data_fingerprint], sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"tokenizer-{settings.kind}-v{settings.vocab_size}-{key}.json"
    if path.exists():
        try:
            tokenizer = TextTokenizer.from_json(path.read_text(encoding="utf-8"), settings)
        except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception on a corrupt file
            log.warning("tokenizer: cache %s is unreadable (%s); training it again", path, str(err)[:100])
        else:
            log.info("tokenizer: loaded %s", path)
            return tokenizer
    tokenizer = TextTokenizer(_train(settings, texts), settings)
    with atomic_output(path) as tmp:
        tmp.write_text(tokenizer.to_json(), encoding="utf-8")
    log.info("tokenizer: trained %s (vocab %d), cached at %s", settings.kind, tokenizer.vocab_size, path)
    return tokenizer


def _train(settings: TokenizerSettings, texts: Callable[[], Iterable[str]]) -> Tokenizer:
    if settings.kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=settings.vocab_size,
            min_frequency=settings.min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        tok = Tokenizer(models.Unigram())
        # prepend_scheme="never": chunked encoding must not invent a space at each chunk start.
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
        tok.decoder = decoders.Metaspace(prepend_scheme="never")
        trainer = trainers.UnigramTrainer(
            vocab_size=settings.vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            unk_token="<unk>",
            show_progress=False,
        )
    if settings.lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.train_from_iterator(texts(), trainer)
    if settings.kind == "unigram":
        tok = _canonical_unigram(tok)
    return tok


def _canonical_unigram(tok: Tokenizer) -> Tokenizer:
    """Make Unigram ids reproducible across processes.

    The Rust trainer (tokenizers 0.23) returns the same pieces every run, but (1) sums scores in
    varying order (~1e-14 apart) and orders tied pieces by hash-map order, and (2) gives the
    characters it must keep but did not select scores ``min + k*1e-4`` in hash-set order. So:
    give those characters the common score ``min``, round all scores, and sort by (score, piece)
    after the specials. Affects only rare characters, whose own piece is their only segmentation.
    """
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    n = len(SPECIAL_TOKENS)
    low = min(s for _, s in vocab[n:])

    def canonical(piece: str, score: float) -> float:
        k = (score - low) / _UNIGRAM_PENALTY_STEP
        if len(piece) == 1 and k < len(vocab) and abs(k - round(k)) < 1e-5:
            return round(low, 8)
        return round(score, 8)

    rest = [(p, canonical(p, s)) for p, s in vocab[n:]]
    rest.sort(key=lambda ps: (-ps[1], ps[0]))
    spec["model"]["vocab"] = [list(v) for v in vocab[:n]] + [list(v) for v in rest]
    return Tokenizer.from_str(json.dumps(spec))


def _infer_settings(spec: dict[str, Any], vocab_size: int) -> TokenizerSettings:
    kind = {"BPE": "bpe", "Unigram": "unigram"}.get(spec.get("model", {}).get("type"))
    if kind is None:
        raise ConfigError("data.tokenizer: tokenizer json has an unsupported model type")
    lowercase = (spec.get("normalizer") or {}).get("type") == "Lowercase"
    return TokenizerSettings(kind=kind, vocab_size=vocab_size, lowercase=lowercase)
