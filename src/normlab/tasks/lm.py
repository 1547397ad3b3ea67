"""Decoder-only causal language modelling: next-token cross-entropy and perplexity.

Loss is the mean next-token cross-entropy in nats (computed in fp32 whatever the precision);
validation/test loss is token-weighted over the whole split and perplexity = exp(loss), both via
torchmetrics so they reduce correctly across ranks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from normlab.models.init import build_model
from normlab.tasks.base import TransformerTask

IGNORE_INDEX = -100


class LanguageModelTask(TransformerTask):
    arch = "decoder"
    arch_hint = "use experiment=mt_multi30k or experiment=mlm_pretrain for the other architectures"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_ppl = Perplexity(ignore_index=IGNORE_INDEX)
        self.test_ppl = Perplexity(ignore_index=IGNORE_INDEX)

    def build_network(self) -> nn.Module:
        return build_model(self.model_cfg, self.hparams.vocab_size)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.net(input_ids)

    def _loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, int]:
        logits = self.net(batch["input_ids"]).float()
        labels = batch["labels"]
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        return loss, logits, int((labels != IGNORE_INDEX).sum())

    def probe_outputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self.net.probe(batch["input_ids"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, _, n_tokens = self._loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/tokens", float(n_tokens), on_step=True, on_epoch=False, reduce_fx="sum")
        return loss

    def _eval_step(self, batch: dict[str, Tensor], loss_metric: MeanMetric, ppl: Perplexity) -> None:
        loss, logits, n_tokens = self._loss(batch)
        loss_metric.update(loss, weight=n_tokens)
        ppl.update(logits, batch["labels"])

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_loss, self.val_ppl)

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute(), prog_bar=True, sync_dist=False)
        self.log("val/ppl", self.val_ppl.compute())
        self.val_loss.reset()
        self.val_ppl.reset()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_loss, self.test_ppl)

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss.compute())
        self.log("test/ppl", self.test_ppl.compute())
        self.test_loss.reset()
        self.test_ppl.reset()

    @torch.no_grad()
    def generate(
        self, prompt: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None
    ) -> Tensor:
        """Sample continuations of ``prompt`` [B, T] with cached keys/values."""
        cache: Any = [{} for _ in range(len(self.net.decoder.layers))]
        logits = self.net(prompt, cache=cache)[:, -1]
        out, pos = [prompt], prompt.shape[1]
        for _ in range(max_new_tokens):
            logits = logits / max(temperature, 1e-6)
            if top_k is not None:
                kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1)
            out.append(nxt)
            logits = self.net(nxt, cache=cache, start=pos)[:, -1]
            pos += 1
        return torch.cat(out, dim=1)
