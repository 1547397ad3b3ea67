"""Sentence-pair classification (MRPC) with the encoder-only stack, from scratch or from an MLM.

Network: the shared :class:`~normlab.models.transformer.Encoder` with two segment embeddings (the
same module the MLM task pretrains, so ``model.init_from=<mlm checkpoint>`` loads it unchanged)
and BERT's classifier on the ``[CLS]`` vector: ``logits = W_c · dropout(tanh(W_p h_CLS + b_p)) + b_c``
(Devlin et al. 2019, Sec. 4.1; ``BertPooler`` + linear layer).

Metrics (torchmetrics, so they reduce correctly across ranks): accuracy and F1 of the positive
class (label 1 = paraphrase), as GLUE reports MRPC. At test time the majority-class baseline
(always predict the most frequent *train* label) is scored with the same metric classes and
logged beside them as ``test/majority_acc`` and ``test/majority_f1``: on MRPC's test set that
constant predictor already gets 66.5% accuracy and 79.9% F1.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy, BinaryF1Score

from normlab.errors import ConfigError
from normlab.models.init import build_model
from normlab.norms.base import Role
from normlab.tasks.base import TransformerTask
from normlab.tasks.init_from import load_pretrained_encoder
from normlab.tasks.mlm import N_SEGMENTS


class ClassifierHead(nn.Module):
    """BERT pooler + classifier on the first ([CLS]) position."""

    def __init__(self, d_model: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.pooler = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, n_classes)

    def param_roles(self) -> Iterator[tuple]:
        for lin in (self.pooler, self.out):
            yield lin.weight, Role.HEAD, None, None
            yield lin.bias, Role.BIAS, None, None

    def forward(self, h_cls: Tensor) -> Tensor:
        return self.out(self.dropout(torch.tanh(self.pooler(h_cls))))


class PairClassifier(nn.Module):
    """Encoder + classifier head: (ids, padding mask, segments) -> logits [B, n_classes]."""

    fsdp_entry_points = ("probe",)

    def __init__(self, encoder: nn.Module, head: ClassifierHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    @property
    def norm_strategy(self) -> nn.Module:
        return self.encoder.norm_strategy

    @property
    def residual_warmup(self) -> nn.Module | None:
        return self.encoder.residual_warmup

    def forward(
        self, ids: Tensor, padding_mask: Tensor | None = None, segments: Tensor | None = None
    ) -> Tensor:
        return self.head(self.encoder(ids, padding_mask, segments)[:, 0])

    def probe(
        self, ids: Tensor, padding_mask: Tensor | None = None, segments: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(final hidden state, class logits)."""
        h = self.encoder(ids, padding_mask, segments)
        return h, self.head(h[:, 0])


@dataclass(frozen=True)
class ClassifyConfig:
    """``task`` of ``configs/task/classify.yaml``."""

    n_classes: int = 2  # MRPC: 1 = paraphrase (the class F1 is computed for)
    classifier_dropout: float = 0.1  # on the pooled [CLS] vector, before the output layer (BERT: 0.1)

    def validate(self) -> None:
        if self.n_classes != 2:
            raise ConfigError(
                f"task.n_classes: only binary pair classification (MRPC) is implemented, got "
                f"{self.n_classes}; set task.n_classes=2"
            )
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ConfigError(f"task.classifier_dropout: must be in [0, 1), got {self.classifier_dropout}")


class PairClassificationTask(TransformerTask):
    Config = ClassifyConfig
    arch = "encoder"
    arch_hint = "use model=encoder (experiment=mrpc_finetune sets it)"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc, self.test_acc = BinaryAccuracy(), BinaryAccuracy()
        self.val_f1, self.test_f1 = BinaryF1Score(), BinaryF1Score()
        self.majority_acc, self.majority_f1 = BinaryAccuracy(), BinaryF1Score()
        self._majority: int | None = None

    def build_network(self) -> nn.Module:
        cfg = self.model_cfg
        with torch.device("meta"):
            encoder = build_model(cfg, self.hparams.vocab_size, n_segments=N_SEGMENTS)
            head = ClassifierHead(cfg.d_model, self.task_cfg.n_classes, self.task_cfg.classifier_dropout)
            return PairClassifier(encoder, head)

    def configure_model(self) -> None:
        fresh = self.net is None
        super().configure_model()
        # Pretrained encoder weights, only inside a Trainer: when load_from_checkpoint rebuilds a
        # fine-tuned task (eval.py), its own weights follow at once and the MLM file may be gone.
        if fresh and self.model_cfg.init_from and self._trainer is not None:
            load_pretrained_encoder(self.net.encoder, self.model_cfg, self.tokenizer_json)

    def forward(
        self, input_ids: Tensor, padding_mask: Tensor | None = None, segments: Tensor | None = None
    ) -> Tensor:
        return self.net(input_ids, padding_mask, segments)

    def _logits(self, batch: dict[str, Tensor]) -> Tensor:
        return self.net(batch["input_ids"], batch.get("padding_mask"), batch.get("segments")).float()

    def probe_outputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self.net.probe(batch["input_ids"], batch.get("padding_mask"), batch.get("segments"))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self._logits(batch)
        loss = F.cross_entropy(logits, batch["labels"])
        acc = (logits.argmax(-1) == batch["labels"]).float().mean()
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/acc", acc, on_step=True, on_epoch=False)
        return loss

    def _eval(
        self, batch: dict[str, Tensor], loss: MeanMetric, acc: BinaryAccuracy, f1: BinaryF1Score
    ) -> Tensor:
        logits, labels = self._logits(batch), batch["labels"]
        loss.update(F.cross_entropy(logits, labels), weight=len(labels))
        preds = logits.argmax(-1)
        acc.update(preds, labels)
        f1.update(preds, labels)
        return labels

    def _log_eval(self, stage: str, loss: MeanMetric, acc: BinaryAccuracy, f1: BinaryF1Score) -> None:
        self.log(f"{stage}/loss", loss.compute(), prog_bar=stage == "val")
        self.log(f"{stage}/acc", acc.compute(), prog_bar=stage == "val")
        self.log(f"{stage}/f1", f1.compute())
        for metric in (loss, acc, f1):
            metric.reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval(batch, self.val_loss, self.val_acc, self.val_f1)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val", self.val_loss, self.val_acc, self.val_f1)

    def on_test_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        self._majority = getattr(datamodule, "majority_class", None)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        labels = self._eval(batch, self.test_loss, self.test_acc, self.test_f1)
        if self._majority is not None:
            constant = torch.full_like(labels, self._majority)
            self.majority_acc.update(constant, labels)
            self.majority_f1.update(constant, labels)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test", self.test_loss, self.test_acc, self.test_f1)
        if self._majority is not None:
            self.log("test/majority_acc", self.majority_acc.compute())
            self.log("test/majority_f1", self.majority_f1.compute())
            self.majority_acc.reset()
            self.majority_f1.reset()
