"""BERT-style masked-language-model pretraining of the encoder-only stack.

The network is the shared :class:`~normlab.models.transformer.Encoder` (with two segment
embeddings, so a checkpoint loads into the pair classifier unchanged) plus BERT's MLM head
(Devlin et al. 2019; ``BertLMPredictionHead``): ``logits = W_E · LN(gelu(W h + b)) + c``, where
the output projection is the (tied) token embedding ``W_E`` and ``c`` is a per-token bias.

Loss: cross-entropy over the *selected* positions only (labels != -100; see
:mod:`normlab.data.mlm`), computed in fp32; the head runs only on those positions, which is also
~7x cheaper than projecting every position onto the vocabulary. Metrics: masked-token accuracy
(argmax equals the original token), and token-weighted loss / perplexity on val and test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from normlab.models.init import build_model
from normlab.norms.base import Role
from normlab.tasks.base import TransformerTask
from normlab.tasks.init_from import load_pretrained_encoder

IGNORE_INDEX = -100
N_SEGMENTS = 2  # segment embeddings for "a" and "b" of a pair (BERT's token type ids)


class MaskedLMHead(nn.Module):
    """``W_E · LN(gelu(W h + b)) + c`` with ``W_E`` the encoder's token embedding (tied)."""

    def __init__(self, d_model: int, vocab_size: int, eps: float) -> None:
        super().__init__()
        self.transform = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.bias = nn.Parameter(torch.empty(vocab_size))

    def param_roles(self) -> Iterator[tuple]:
        yield self.transform.weight, Role.HEAD, None, None
        yield self.transform.bias, Role.BIAS, None, None
        yield self.bias, Role.BIAS, None, None

    def forward(self, h: Tensor, embedding: Tensor) -> Tensor:
        return F.linear(self.norm(F.gelu(self.transform(h))), embedding, self.bias)


class MaskedLM(nn.Module):
    """Encoder + MLM head. ``encoder`` is exactly what the pair classifier loads."""

    fsdp_entry_points = ("probe",)

    def __init__(self, encoder: nn.Module, head: MaskedLMHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    @property
    def norm_strategy(self) -> nn.Module:
        return self.encoder.norm_strategy

    @property
    def residual_warmup(self) -> nn.Module | None:
        return self.encoder.residual_warmup

    def forward(
        self,
        ids: Tensor,
        segments: Tensor | None = None,
        labels: Tensor | None = None,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Logits [n_selected, V] at positions where ``labels`` != -100 (all positions if None)."""
        h = self.encoder(ids, padding_mask, segments)
        if labels is not None:
            h = h[labels != IGNORE_INDEX]
        return self.head(h, self.encoder.embed.weight)

    def probe(self, ids: Tensor, segments: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(final hidden state, MLM logits at every position)."""
        h = self.encoder(ids, None, segments)
        return h, self.head(h, self.encoder.embed.weight)


class MaskedLMTask(TransformerTask):
    arch = "encoder"
    arch_hint = "use model=encoder (experiment=mlm_pretrain sets it)"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc, self.test_acc = MeanMetric(), MeanMetric()

    def build_network(self) -> nn.Module:
        cfg = self.model_cfg
        with torch.device("meta"):
            encoder = build_model(cfg, self.hparams.vocab_size, n_segments=N_SEGMENTS)
            return MaskedLM(encoder, MaskedLMHead(cfg.d_model, self.hparams.vocab_size, cfg.norm_eps))

    def configure_model(self) -> None:
        fresh = self.net is None
        super().configure_model()
        # Continue pretraining from another MLM checkpoint. Only inside a Trainer: when
        # load_from_checkpoint rebuilds this task, the checkpoint's own weights follow at once.
        if fresh and self.model_cfg.init_from and self._trainer is not None:
            load_pretrained_encoder(self.net.encoder, self.model_cfg, self.tokenizer_json)

    def forward(self, input_ids: Tensor, segments: Tensor | None = None) -> Tensor:
        """Logits [B, T, V] at every position."""
        return self.net(input_ids, segments)

    def _loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, int]:
        labels = batch["labels"]
        logits = self.net(batch["input_ids"], batch.get("segments"), labels).float()
        target = labels[labels != IGNORE_INDEX]
        loss = F.cross_entropy(logits, target)
        acc = (logits.argmax(-1) == target).float().mean()
        return loss, acc, int(target.numel())

    def probe_outputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self.net.probe(batch["input_ids"], batch.get("segments"))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, acc, n = self._loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/acc", acc, on_step=True, on_epoch=False)
        self.log("train/masked_tokens", float(n), on_step=True, on_epoch=False, reduce_fx="sum")
        return loss

    def _eval(self, batch: dict[str, Tensor], loss_metric: MeanMetric, acc_metric: MeanMetric) -> None:
        loss, acc, n = self._loss(batch)
        loss_metric.update(loss, weight=n)
        acc_metric.update(acc, weight=n)

    def _log_eval(self, stage: str, loss_metric: MeanMetric, acc_metric: MeanMetric) -> None:
        loss = loss_metric.compute()
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val")
        self.log(f"{stage}/ppl", torch.exp(loss))
        self.log(f"{stage}/acc", acc_metric.compute())
        loss_metric.reset()
        acc_metric.reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval(batch, self.val_loss, self.val_acc)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val", self.val_loss, self.val_acc)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval(batch, self.test_loss, self.test_acc)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test", self.test_loss, self.test_acc)
