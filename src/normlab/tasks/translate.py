"""Encoder-decoder translation: label-smoothed cross-entropy, SacreBLEU on decoded text.

Training minimises label-smoothed cross-entropy (Szegedy et al. 2016; Vaswani et al. 2017 use
eps = 0.1): ``(1 - eps) * NLL + eps * mean_v(-log p_v)``, torch's ``label_smoothing`` form.
Validation logs the plain per-token NLL as ``val/loss`` (what checkpoints select on) and
``val/ppl``, plus ``val/bleu``: greedy decoding of the first ``val_bleu_size`` validation
sentences, cheap enough to run at every validation. Testing (``eval.py``) beam-searches the whole
test set and logs ``test/bleu`` and ``test/chrf``; the SacreBLEU signatures are printed, logged as
TensorBoard text, and written with the hypotheses to ``<run dir>/hypotheses/``.

Decoding settings are task hyper-parameters, so ``eval.py ckpt_path=... task_overrides='{beam_size:
1}'`` changes them without retraining.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from normlab.data.tokenizer import SPECIAL_TOKENS, TextTokenizer
from normlab.decoding import beam_search, greedy_decode, max_lengths
from normlab.errors import ConfigError
from normlab.metrics.bleu import corpus_scores, write_hypotheses
from normlab.models.init import build_model
from normlab.tasks.base import TransformerTask

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TranslateConfig:
    """``task`` of ``configs/task/translate.yaml``."""

    label_smoothing: float = 0.1  # eps of the label-smoothed cross-entropy (0 = plain NLL)
    val_bleu_size: int = 200  # greedy BLEU on the first N validation sentences (0 = off)
    beam_size: int = 5  # test-time beam (1 = greedy)
    length_penalty: float = 1.0  # hypotheses ranked by sum(log p) / length ** length_penalty
    max_len_ratio: float = 1.5  # output limit: max_len_ratio * source_length + max_len_offset
    max_len_offset: int = 10
    hypotheses_dir: str | None = None  # where hypotheses + scores go (null = <run dir>/hypotheses)

    def validate(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"task.label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.val_bleu_size < 0:
            raise ConfigError(f"task.val_bleu_size: must be >= 0 (0 = off), got {self.val_bleu_size!r}")
        if self.beam_size < 1:
            raise ConfigError(f"task.beam_size: must be an integer >= 1 (1 = greedy), got {self.beam_size!r}")
        if self.max_len_ratio <= 0 or self.max_len_offset < 0:
            raise ConfigError(
                f"task.max_len_ratio / max_len_offset: need ratio > 0 and offset >= 0, "
                f"got {self.max_len_ratio} / {self.max_len_offset}"
            )


class TranslationTask(TransformerTask):
    Config = TranslateConfig
    arch = "encoder_decoder"
    arch_hint = "use model=encoder_decoder (experiment=mt_multi30k sets it)"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self._hyps: dict[int, str] = {}
        self._refs: dict[int, str] = {}
        self._tokenizer: TextTokenizer | None = None
        self.last_scores: dict[str, Any] = {}  # the latest corpus scores + signatures, per split
        self._checkpoint_step = 0  # optimizer steps of a loaded checkpoint (eval.py has global_step 0)

    def build_network(self) -> nn.Module:
        return build_model(self.model_cfg, self.hparams.vocab_size)

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            if self.tokenizer_json is None:
                raise ConfigError("task: no tokenizer attached; use normlab.run.train or load a checkpoint")
            self._tokenizer = TextTokenizer.from_json(self.tokenizer_json)
        return self._tokenizer

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        return self.net(src, src_mask, tgt_in)

    # --- loss ---------------------------------------------------------------------------------
    def _losses(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, int]:
        """(label-smoothed loss, plain NLL, number of target tokens), both per-token means."""
        logits = self.net(batch["src"], batch["src_mask"], batch["tgt_in"]).float().flatten(0, 1)
        labels = batch["labels"].flatten()
        smoothed = F.cross_entropy(
            logits, labels, ignore_index=IGNORE_INDEX, label_smoothing=self.task_cfg.label_smoothing
        )
        nll = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        return smoothed, nll, int((labels != IGNORE_INDEX).sum())

    def probe_outputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        return self.net.probe(batch["src"], batch["src_mask"], batch["tgt_in"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, nll, n_tokens = self._losses(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/nll", nll.detach(), on_step=True, on_epoch=False)
        self.log("train/tokens", float(n_tokens), on_step=True, on_epoch=False, reduce_fx="sum")
        return loss

    # --- decoding -----------------------------------------------------------------------------
    def translate(self, src: Tensor, src_mask: Tensor, beam_size: int | None = None) -> list[str]:
        """Detokenised translations of a padded source batch (beam 1 = greedy)."""
        tok, hp = self.tokenizer, self.task_cfg
        beam = hp.beam_size if beam_size is None else beam_size
        common = {
            "bos_id": tok.bos_id,
            "eos_id": tok.eos_id,
            "max_len": max_lengths(src_mask, hp.max_len_ratio, hp.max_len_offset),
            "banned": [i for i in range(len(SPECIAL_TOKENS)) if i != tok.eos_id],
        }
        if beam == 1:
            ids = greedy_decode(self.net, src, src_mask, **common)
        else:
            ids = beam_search(
                self.net, src, src_mask, beam_size=beam, length_penalty=hp.length_penalty, **common
            )
        return [tok.decode(row) for row in ids]

    def _collect(self, batch: dict[str, Any], rows: Tensor, beam_size: int) -> None:
        if not bool(rows.any()):
            return
        hyps = self.translate(batch["src"][rows], batch["src_mask"][rows], beam_size)
        picked = rows.nonzero().flatten().tolist()
        for i, hyp in zip(picked, hyps, strict=True):
            index = int(batch["index"][i])
            self._hyps[index], self._refs[index] = hyp, batch["refs"][i]

    # --- validation / test --------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, nll, n_tokens = self._losses(batch)
        self.val_loss.update(nll, weight=n_tokens)
        self._collect(batch, batch["index"] < self.task_cfg.val_bleu_size, beam_size=1)

    # Epoch-end values are identical on every rank (torchmetrics syncs MeanMetric.compute, hypotheses
    # are gathered before scoring), so sync_dist=True only averages equal numbers under DDP.
    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/ppl", torch.exp(loss), sync_dist=True)
        self.val_loss.reset()
        if self.task_cfg.val_bleu_size and not self.trainer.sanity_checking:
            scores = self._corpus_scores("val", beam_size=1)
            if scores is not None:
                self.log("val/bleu", scores["bleu"], prog_bar=True, sync_dist=True)
        self._hyps, self._refs = {}, {}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, nll, n_tokens = self._losses(batch)
        self.test_loss.update(nll, weight=n_tokens)
        self._collect(batch, torch.ones_like(batch["index"], dtype=torch.bool), self.task_cfg.beam_size)

    def on_test_epoch_end(self) -> None:
        loss = self.test_loss.compute()
        self.log("test/loss", loss, sync_dist=True)
        self.log("test/ppl", torch.exp(loss), sync_dist=True)
        self.test_loss.reset()
        scores = self._corpus_scores("test", beam_size=self.task_cfg.beam_size)
        if scores is not None:
            self.log("test/bleu", scores["bleu"], sync_dist=True)
            self.log("test/chrf", scores["chrf"], sync_dist=True)
        self._hyps, self._refs = {}, {}

    def _corpus_scores(self, split: str, beam_size: int) -> dict[str, Any] | None:
        """Gather hypotheses from all ranks, score them in index order, write them (rank 0)."""
        hyps, refs = _gather(self._hyps), _gather(self._refs)
        if not hyps:
            return None
        order = sorted(hyps)
        scores = corpus_scores([hyps[i] for i in order], [refs[i] for i in order])
        src, tgt, test_set = self._data_names()
        name = test_set if split == "test" else "val"
        settings = {
            "split": name,
            "pair": f"{src}-{tgt}",
            "beam_size": beam_size,
            "length_penalty": self.task_cfg.length_penalty,
            "max_len": f"{self.task_cfg.max_len_ratio} * src_len + {self.task_cfg.max_len_offset}",
            "trained_steps": max(int(self.global_step), self._checkpoint_step),
        }
        self.last_scores[split] = {**scores.as_dict(), **settings}
        if self.trainer.is_global_zero:
            self._report(split, name, tgt, [hyps[i] for i in order], scores, settings)
        return self.last_scores[split]

    def _report(self, split: str, name: str, tgt: str, hyps: list[str], scores: Any, settings: dict) -> None:
        folder = Path(self.task_cfg.hypotheses_dir or Path(self.trainer.default_root_dir) / "hypotheses")
        path = write_hypotheses(
            folder / f"{name}.{settings['pair']}.beam{settings['beam_size']}.{tgt}", hyps, scores, settings
        )
        line = (
            f"{split} {name} {settings['pair']} beam={settings['beam_size']}: "
            f"BLEU {scores.bleu:.2f} [{scores.bleu_signature}]  chrF {scores.chrf:.2f} "
            f"[{scores.chrf_signature}]  ({scores.n_sentences} sentences, hypotheses: {path})"
        )
        if split == "test":
            self.print(line)
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                experiment.add_text(f"{split}/sacrebleu", line, global_step=int(self.global_step))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._checkpoint_step = int(checkpoint.get("global_step") or 0)

    def _data_names(self) -> tuple[str, str, str]:
        """(source language, target language, test set) of the data actually being evaluated."""
        dm = getattr(self.trainer, "datamodule", None)
        data = dict(self.hparams.get("data") or {})
        get = lambda key, default: getattr(dm, key, None) or data.get(key, default)  # noqa: E731
        return get("src_lang", "src"), get("tgt_lang", "tgt"), get("test_set", "test")


def _gather(items: dict[int, str]) -> dict[int, str]:
    """Union of per-rank dicts (DDP pads splits with duplicates; equal keys hold equal text)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return items
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, items)
    merged: dict[int, str] = {}
    for part in parts:
        merged.update(part)
    return merged
