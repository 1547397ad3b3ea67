"""Tokenizers: fixed special ids, lossless byte-level round trip, cache reuse, determinism."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from normlab.data import tokenizer as tokmod
from normlab.data.sources import ensure_dataset
from normlab.data.tokenizer import (
    SPECIAL_TOKENS,
    TextTokenizer,
    TokenizerSettings,
    split_corpus,
    train_or_load,
)
from normlab.errors import ConfigError

MIRROR = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    data = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NORMLAB_DATA_MIRROR", str(MIRROR))
        shakespeare = ensure_dataset("tinyshakespeare", data) / "input.txt"
        m30k = ensure_dataset("multi30k", data, files=["val.de", "val.en"])
    text = shakespeare.read_text(encoding="utf-8")
    cut = int(0.9 * len(text))
    return {
        "train": text[:cut],
        "heldout": text[cut:],
        "de": (m30k / "val.de").read_text(encoding="utf-8"),
        "en": (m30k / "val.en").read_text(encoding="utf-8"),
    }


@pytest.fixture(scope="module")
def bpe(corpora: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    train = corpora["train"]
    return train_or_load(
        TokenizerSettings(), lambda: split_corpus(train), tmp_path_factory.mktemp("tok"), "shk"
    )


def test_special_tokens_have_fixed_ids(bpe: TextTokenizer) -> None:
    ids = [bpe.pad_id, bpe.unk_id, bpe.bos_id, bpe.eos_id, bpe.cls_id, bpe.sep_id, bpe.mask_id]
    assert ids == list(range(7))
    assert [bpe.id_to_token(i) for i in ids] == list(SPECIAL_TOKENS)
    assert bpe.vocab_size == 2048


def test_bert_special_token_names_and_legacy_pad_name_still_loads(bpe: TextTokenizer) -> None:
    """The MLM/MRPC path needs BERT's [CLS] [SEP] [MASK] [PAD]; checkpoints from before the pad
    token was renamed (it was <pad>, same id 0) must stay loadable."""
    assert {"[CLS]", "[SEP]", "[MASK]", "[PAD]"} <= set(SPECIAL_TOKENS)
    legacy = bpe.to_json().replace('"[PAD]"', '"<pad>"')
    old = TextTokenizer.from_json(legacy)
    assert old.id_to_token(0) == "<pad>" and old.pad_id == 0
    assert old.encode("To be, or not") == bpe.encode("To be, or not")
    with pytest.raises(ConfigError, match=r"special token \[PAD\] must have id 0"):
        TextTokenizer.from_json(bpe.to_json().replace('"[PAD]"', '"<nopad>"'))


def test_byte_level_round_trip_is_exact(bpe: TextTokenizer, corpora: dict[str, str]) -> None:
    lines = corpora["heldout"].splitlines(keepends=True)[:400]
    lines += ["  odd   spacing\t\n", "ünïcødé ✓", "\n\n\n"]
    german = corpora["de"].splitlines(keepends=True)[:300]
    assert any(ch in "".join(german) for ch in "äöüß")
    for line in lines + german:
        assert bpe.decode(bpe.encode(line)) == line
    assert bpe.encode_batch(german) == [bpe.encode(x) for x in german]
    ids = bpe.encode("Romeo, Romeo!")
    assert bpe.decode([bpe.bos_id, *ids, bpe.eos_id, bpe.pad_id]) == "Romeo, Romeo!"


def test_chunked_corpus_encoding_equals_whole_encoding(bpe: TextTokenizer, corpora: dict[str, str]) -> None:
    text = corpora["heldout"]
    assert "".join(split_corpus(text)) == text
    ids = bpe.encode_corpus(text)
    assert ids == bpe.encode(text)
    assert bpe.decode(ids) == text
    assert len(ids) < len(text) / 2.5  # subwords, not characters


def test_cache_is_reused_without_retraining(
    corpora: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, en = TokenizerSettings(vocab_size=400), corpora["en"]
    first = train_or_load(settings, lambda: split_corpus(en), tmp_path, "val.en")
    (cached,) = tmp_path.glob("tokenizer-bpe-v400-*.json")
    mtime = cached.stat().st_mtime_ns

    def no_training(*args: object) -> None:
        raise AssertionError("retrained although the cache exists")

    monkeypatch.setattr(tokmod, "_train", no_training)
    again = train_or_load(settings, lambda: split_corpus(en), tmp_path, "val.en")
    assert again.to_json() == first.to_json() and cached.stat().st_mtime_ns == mtime
    with pytest.raises(AssertionError, match="retrained"):  # other data -> other cache key
        train_or_load(settings, lambda: split_corpus(en), tmp_path, "val.en+more")


def test_json_round_trip_gives_identical_ids(bpe: TextTokenizer, corpora: dict[str, str]) -> None:
    clone = TextTokenizer.from_json(bpe.to_json())
    assert clone.settings == TokenizerSettings(kind="bpe", vocab_size=2048)
    sample = corpora["heldout"][:20000]
    assert clone.encode_corpus(sample) == bpe.encode_corpus(sample)


_TRAIN_SNIPPET = textwrap.dedent(
    """
    import hashlib, sys, tempfile
    from pathlib import Path
    from normlab.data.tokenizer import TokenizerSettings, train_or_load
    text = Path(sys.argv[1]).read_text(encoding="utf-8")
    for kind in ("bpe", "unigram"):
        tok = train_or_load(TokenizerSettings(kind=kind, vocab_size=600),
                            lambda: text.splitlines(True), Path(tempfile.mkdtemp()), "x")
        print(kind, hashlib.sha256(tok.to_json().encode()).hexdigest())
    """
)


def test_training_is_deterministic_across_processes(corpora: dict[str, str], tmp_path: Path) -> None:
    """Rust hash maps are seeded per process, so compare fresh interpreters, not two calls."""
    (tmp_path / "en.txt").write_text(corpora["en"], encoding="utf-8")
    cmd = [sys.executable, "-c", _TRAIN_SNIPPET, str(tmp_path / "en.txt")]
    runs = [subprocess.run(cmd, capture_output=True, text=True, timeout=120) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.count("\n") == 2
    here = train_or_load(
        TokenizerSettings(vocab_size=600), lambda: corpora["en"].splitlines(True), tmp_path, "x"
    )
    assert f"bpe {hashlib.sha256(here.to_json().encode()).hexdigest()}" in runs[0].stdout


def test_unigram_kind(corpora: dict[str, str], tmp_path: Path) -> None:
    de = corpora["de"]
    uni = train_or_load(
        TokenizerSettings(kind="unigram", vocab_size=800), lambda: split_corpus(de), tmp_path, "de"
    )
    assert [uni.id_to_token(i) for i in range(7)] == list(SPECIAL_TOKENS)
    assert uni.vocab_size == 800
    for line in de.splitlines(keepends=True)[:200]:
        assert uni.decode(uni.encode(line)) == line
    assert TextTokenizer.from_json(uni.to_json()).settings.kind == "unigram"


def test_lowercase_setting(corpora: dict[str, str], tmp_path: Path) -> None:
    en = corpora["en"]
    low = train_or_load(
        TokenizerSettings(vocab_size=400, lowercase=True), lambda: split_corpus(en), tmp_path, "en"
    )
    assert low.encode("A Man In A RED Shirt") == low.encode("a man in a red shirt")
    assert TextTokenizer.from_json(low.to_json()).settings.lowercase


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ({"kind": "wordpiece"}, "data.tokenizer.kind"),
        ({"vocab_size": 263}, "data.tokenizer.vocab_size"),
        ({"kind": "unigram", "vocab_size": 7}, "data.tokenizer.vocab_size"),
        ({"min_frequency": 0}, "data.tokenizer.min_frequency"),
        ({"vocab_sise": 4096}, "data.tokenizer.vocab_sise"),
        ({"vocab_size": "big"}, "data.tokenizer.vocab_size"),
    ],
)
def test_settings_are_validated(value: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        TokenizerSettings.parse(value)


def test_settings_parse_accepts_dict_and_none() -> None:
    assert TokenizerSettings.parse(None) == TokenizerSettings()
    parsed = TokenizerSettings.parse({"kind": "unigram", "vocab_size": 1000})
    assert parsed == TokenizerSettings(kind="unigram", vocab_size=1000)
    assert TokenizerSettings.parse(parsed) is parsed


def test_a_corrupt_cache_file_is_retrained_with_a_warning(tmp_path, caplog) -> None:
    from normlab.data.tokenizer import TokenizerSettings, train_or_load

    settings = TokenizerSettings(kind="bpe", vocab_size=300)
    texts = lambda: ["the cat sat on the mat"] * 50  # noqa: E731
    first = train_or_load(settings, texts, tmp_path, "fp")
    (cache,) = tmp_path.glob("tokenizer-*.json")
    cache.write_text('{"truncated": ')
    with caplog.at_level("WARNING", logger="normlab.data"):
        again = train_or_load(settings, texts, tmp_path, "fp")
    assert "unreadable" in caplog.text and "training it again" in caplog.text
    assert again.to_json() == first.to_json() and cache.read_text() == first.to_json()
