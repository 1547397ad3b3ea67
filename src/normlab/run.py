"""``train(cfg)`` and ``evaluate(cfg)``: pure functions over a composed Hydra config.

``train.py`` / ``eval.py`` are thin ``@hydra.main`` wrappers around these; tests call them
directly. Both return ``(metrics, objects)``.

Data flow of a run: validate every config group once (model, optim, compute, trainer; the data
module and task validate their own keys when built) -> apply the compute settings (threads,
subnormal flushing) -> seed -> datamodule (fetch data, train/load the tokenizer) -> task
(LightningModule; the network is built in ``configure_model``) -> Trainer (strategy, precision,
callbacks, TensorBoard) -> checkpoints, logs and the run record under one run directory.
Nothing is seeded, printed or written before every check that can fail without data has passed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from normlab.checkpoints import (
    CHECKPOINT_KEY,
    AtomicCheckpointIO,
    check_same_architecture,
    check_task,
    load_task,
    read_checkpoint_meta,
)
from normlab.config import (
    ComputeConfig,
    validate_compute_config,
    validate_model_config,
    validate_optim_config,
)
from normlab.description import format_description, model_description, network_description
from normlab.errors import ConfigError
from normlab.instantiate import instantiate_callbacks, instantiate_checked, instantiate_loggers
from normlab.run_log import log_description, rank_zero_print
from normlab.trainer_config import refuse_fused_adamw_under_fsdp2, validate_trainer_config
from normlab.typed_config import as_plain

log = logging.getLogger("normlab")


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def apply_compute(compute: ComputeConfig) -> None:
    """Process-wide settings of ``compute``: intra-op threads and subnormal flushing.

    Subnormals: in deep Post-LN stacks (postln, branchnorm, ...) the backward signal of the lower
    layers shrinks into the subnormal range (|x| < 1.2e-38 in fp32), and x86 CPUs compute on those
    through a microcode path that is tens of times slower (measured here at depth 1000: Post-LN 30.5
    s/step with subnormals against 4.6 s for Pre-LN). Values that small are zero for training
    purposes; ``compute.flush_denormal=false`` keeps IEEE behaviour. No effect on GPUs.
    """
    torch.set_flush_denormal(compute.flush_denormal)
    if compute.threads is not None:
        torch.set_num_threads(compute.threads)


def build_trainer(cfg: DictConfig, callbacks: list[L.Callback], loggers: list[Any]) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` (already checked by :func:`validate_trainer_config`), writing
    checkpoint files atomically."""
    return instantiate_checked(
        "trainer", cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )


def check_writable(folder: Path) -> None:
    """The run folder must be writable before any work starts (one line, not a crash at step N)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"paths.log_dir: cannot write into {folder} ({err.strerror or err}); point paths.log_dir at a "
            "writable folder"
        ) from None


def resume_folder(ckpt_path: Path) -> Path | None:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/<file or dir>``), if it is one."""
    parent = ckpt_path.resolve().parent
    return parent.parent if parent.name == "checkpoints" else None


def _checked_resume(path: Any, task: Any, model: dict[str, Any]) -> str:
    """A resume checkpoint must be readable, of this task family and of this architecture."""
    meta = read_checkpoint_meta(path, "ckpt_path")
    extras = meta.get(CHECKPOINT_KEY)
    if not extras:
        raise ConfigError(f"ckpt_path: {path} is not a normlab checkpoint (no '{CHECKPOINT_KEY}' entry)")
    check_task(extras, task, path)
    saved = (meta.get("hyper_parameters") or {}).get("model") or {}
    check_same_architecture(model, saved, "ckpt_path", f"the checkpoint {path}")
    return str(path)


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit (and optionally test) the task described by ``cfg``."""
    model_cfg = validate_model_config(cfg.model)
    optim_cfg = validate_optim_config(cfg.optim)
    compute = validate_compute_config(cfg.get("compute"))
    validate_trainer_config(cfg.trainer)  # precision x hardware x strategy, before any data work
    refuse_fused_adamw_under_fsdp2(cfg.trainer, optim_cfg.fused)
    check_writable(Path(str(cfg.paths.output_dir)))
    description = model_description(model_cfg)
    apply_compute(compute)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    data_cfg = _container(cfg.data)
    datamodule = _instantiate("data", cfg.data)
    tokenizer = datamodule.prepare_tokenizer()
    task = _instantiate(
        "task",
        cfg.task,
        model=model_cfg,
        optim=optim_cfg,
        compute=compute,
        vocab_size=tokenizer.vocab_size,
        data=data_cfg,
        seed=cfg.seed,
    )
    task.tokenizer_json = tokenizer.to_json()
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        ckpt_path = _checked_resume(ckpt_path, task, as_plain(model_cfg))
        previous = resume_folder(Path(ckpt_path))
        if previous is not None:  # continue in the run's own folder: its best-so-far, curves, logs
            with open_dict(cfg):
                cfg.paths.output_dir = str(previous)
            log.info("resuming %s: continuing in its run folder %s", ckpt_path, previous)

    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer = build_trainer(cfg, callbacks, loggers)

    rank_zero_print(format_description(description))
    log_description(loggers, description, cfg)
    baseline = getattr(datamodule, "unigram_baseline", None)
    if baseline is not None:
        rank_zero_print(
            f"unigram baseline (val cross-entropy of train token frequencies): {baseline:.4f} nats"
        )

    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = _scalars(trainer.callback_metrics)
    if cfg.get("test"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        results = trainer.test(task, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update(_scalars(results[0] if results else {}))
    if baseline is not None:
        metrics["unigram_baseline"] = float(baseline)
    objects = {
        "cfg": cfg,
        "datamodule": datamodule,
        "task": task,
        "trainer": trainer,
        "description": description,
    }
    return metrics, objects


def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Test a checkpoint; the model, tokenizer and data settings all come from the checkpoint."""
    ckpt_path = Path(str(cfg.ckpt_path))
    if not ckpt_path.exists():
        raise ConfigError(
            f"ckpt_path: {ckpt_path} does not exist; pass ckpt_path=<run dir>/checkpoints/last.ckpt"
        )
    compute = validate_compute_config(cfg.get("compute"))
    validate_trainer_config(cfg.trainer)
    meta = read_checkpoint_meta(ckpt_path, "ckpt_path")
    extra = meta.get(CHECKPOINT_KEY)
    if not extra:
        raise ConfigError(f"ckpt_path: {ckpt_path} is not a normlab checkpoint (no '{CHECKPOINT_KEY}' entry)")
    task_cls = get_class(extra["task"])
    overrides = _container(cfg.get("task_overrides")) or {}
    apply_compute(compute)
    task = load_task(task_cls, ckpt_path, {**overrides, "compute": compute})

    data_cfg = dict(extra["data"])
    data_cfg.update(_container(cfg.get("data_overrides")) or {})
    data_cfg["data_dir"] = str(cfg.paths.data_dir)
    data_cfg["tokenizer_json"] = extra["tokenizer"]
    datamodule = _instantiate("data", data_cfg)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer = build_trainer(cfg, instantiate_callbacks(cfg.get("callbacks")), loggers)
    rank_zero_print(format_description(network_description(task.net)))
    results = trainer.test(task, datamodule=datamodule)
    metrics = _scalars(results[0] if results else {})
    baseline = getattr(datamodule, "unigram_baseline", None)
    if baseline is not None:
        metrics["unigram_baseline"] = float(baseline)
    out_dir = Path(str(cfg.paths.output_dir))
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        report = {
            "ckpt_path": str(ckpt_path),
            "metrics": metrics,
            "model": task.hparams["model"],
            "norm": network_description(task.net),
        }
        (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
        rank_zero_print(f"metrics written to {out_dir / 'metrics.json'}")
    return metrics, {"cfg": cfg, "task": task, "trainer": trainer, "datamodule": datamodule}


def _instantiate(key: str, node: Any, **kwargs: Any) -> Any:
    """hydra instantiate with a one-line ConfigError for unknown / wrongly typed arguments."""
    return instantiate_checked(key, node, _convert_="all", _recursive_=False, **kwargs)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = float(v)
    return out
