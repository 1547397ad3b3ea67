"""Corpus BLEU and chrF with SacreBLEU (Post 2018), the way MT papers report them.

Hypotheses are detokenised text (the tokenizer's ``decode``), references are the raw target
lines; SacreBLEU applies its own default tokenisation (``13a`` for BLEU) so scores are comparable
across tokenizers. The signature string records every setting that changes the number.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF


@dataclass(frozen=True)
class CorpusScores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    n_sentences: int
    bleu_detail: str  # e.g. "BLEU = 35.1 66.3/42.0/28.4/19.5 (BP = 0.98 ratio = 0.98 ...)"

    def as_dict(self) -> dict:
        return asdict(self)


def corpus_scores(hypotheses: list[str], references: list[str]) -> CorpusScores:
    """SacreBLEU corpus BLEU (13a, exp smoothing, mixed case) and chrF (char 6-grams, beta 2)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    return CorpusScores(
        bleu=float(b.score),
        chrf=float(c.score),
        bleu_signature=str(bleu.get_signature()),
        chrf_signature=str(chrf.get_signature()),
        n_sentences=len(hypotheses),
        bleu_detail=str(b),
    )


def write_hypotheses(path: Path, hypotheses: list[str], scores: CorpusScores, settings: dict) -> Path:
    """``path``: one hypothesis per line, in test-set order; ``path.json``: scores + signature."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(h.replace("\n", " ") + "\n" for h in hypotheses), encoding="utf-8")
    report = {**scores.as_dict(), **settings, "hypotheses": str(path)}
    path.with_name(path.name + ".json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return path
