"""``model.init_from``: a classifier built inside a Trainer from an MLM checkpoint computes exactly
the MLM's encoder outputs; every kind of mismatch fails with one ConfigError line naming the key."""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from normlab.config import validate_model_config
from normlab.data.mlm import mask_tokens, pair_windows
from normlab.errors import ConfigError
from normlab.tasks.classify import PairClassificationTask
from normlab.tasks.mlm import MaskedLMTask
from tests.task_helpers import bare_trainer

V = 300
MODEL = {"arch": "encoder", "norm": "postln", "depth": 2, "d_model": 32, "n_heads": 2, "d_ffn": 64}
TOKENIZER = '{"model": "pretend tokenizer A"}'  # init_from compares the json strings


def _trainer(**kwargs) -> L.Trainer:
    return bare_trainer(tempfile.mkdtemp(prefix="normlab-test-"), devices=1, **kwargs)


def _loader(*batches: dict[str, torch.Tensor]) -> DataLoader:
    return DataLoader(list(batches), batch_size=None)  # ready-made batches, as they are


def _mlm_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids, segments = pair_windows(torch.randint(7, V, (4 * 21,), generator=g), 24)
    inputs, labels = mask_tokens(ids, V, g)
    return {"input_ids": inputs, "segments": segments, "labels": labels}


def _pair_batch() -> dict[str, torch.Tensor]:
    ids, segments = pair_windows(torch.randint(7, V, (3 * 17,)), 20)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, -4:] = False
    return {"input_ids": ids, "segments": segments, "padding_mask": mask, "labels": torch.tensor([1, 0, 1])}


@pytest.fixture(scope="module")
def mlm_ckpt(tmp_path_factory) -> tuple[Path, MaskedLMTask]:
    """An MLM trained two steps (so its weights are no init) and saved by Lightning."""
    task = MaskedLMTask(model=MODEL, optim={"warmup_steps": 0}, vocab_size=V, seed=11)
    task.tokenizer_json = TOKENIZER
    trainer = _trainer(max_steps=2)
    trainer.fit(task, train_dataloaders=_loader(_mlm_batch(0), _mlm_batch(1)))
    path = tmp_path_factory.mktemp("mlm") / "mlm.ckpt"
    trainer.save_checkpoint(path)
    return path, task


def _classifier(
    path: Path, tokenizer: str = TOKENIZER, vocab_size: int = V, **model
) -> PairClassificationTask:
    task = PairClassificationTask(
        model={**MODEL, "init_from": str(path), **model}, optim={}, vocab_size=vocab_size, seed=22
    )
    task.tokenizer_json = tokenizer
    return task


def test_classifier_reproduces_the_mlm_encoder_outputs_exactly(mlm_ckpt) -> None:
    path, mlm = mlm_ckpt
    clf = _classifier(path)
    batch = _pair_batch()
    _trainer().validate(clf, dataloaders=_loader(batch))  # configure_model runs inside the Trainer
    mlm.eval()
    clf.eval()
    args = (batch["input_ids"], batch["padding_mask"], batch["segments"])
    with torch.no_grad():
        expected = mlm.net.encoder(*args)
        got = clf.net.encoder(*args)
    assert torch.equal(got, expected)
    # ... and without init_from the same seed gives a different encoder (the test is not vacuous)
    scratch = PairClassificationTask(model=MODEL, optim={}, vocab_size=V, seed=22)
    scratch.configure_model()
    scratch.eval()
    with torch.no_grad():
        assert (scratch.net.encoder(*args) - expected).abs().max() > 0.1


def test_load_from_checkpoint_does_not_need_the_mlm_file(mlm_ckpt, tmp_path: Path) -> None:
    """eval.py rebuilds a fine-tuned task from its own checkpoint, even after the MLM file moved."""
    path, _ = mlm_ckpt
    moved = tmp_path / "moved.ckpt"
    moved.write_bytes(path.read_bytes())
    clf = _classifier(moved)
    trainer = _trainer()
    trainer.validate(clf, dataloaders=_loader(_pair_batch()))
    ckpt = tmp_path / "clf.ckpt"
    trainer.save_checkpoint(ckpt)
    moved.unlink()
    again = PairClassificationTask.load_from_checkpoint(ckpt)
    for (k, a), b in zip(clf.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"d_model": 64, "n_heads": 2}, r"^model.d_model: 64 here but 32 in the pretraining checkpoint"),
        ({"norm": "preln"}, r"^model.norm: 'preln' here but 'postln' .*set model.norm='postln'"),
        ({"depth": 3}, r"^model.depth: 3 here but 2"),
        ({"vocab_size": V + 1}, r"^model.init_from: encoder tensor 'embed.weight' has shape \(300, 32\)"),
    ],
)
def test_shape_and_architecture_mismatches_fail_in_one_line(mlm_ckpt, change, message) -> None:
    path, _ = mlm_ckpt
    clf = _classifier(path, **change)
    with pytest.raises(ConfigError, match=message) as err:
        _trainer().validate(clf, dataloaders=_loader(_pair_batch()))
    assert "\n" not in str(err.value)


def test_tokenizer_mismatch_fails_in_one_line(mlm_ckpt) -> None:
    path, _ = mlm_ckpt
    clf = _classifier(path, tokenizer='{"model": "another tokenizer"}')
    with pytest.raises(ConfigError, match=r"^model.init_from: the checkpoint's tokenizer .* differs"):
        _trainer().validate(clf, dataloaders=_loader(_pair_batch()))


def test_missing_file_and_wrong_kind_of_checkpoint(mlm_ckpt, tmp_path: Path) -> None:
    path, _ = mlm_ckpt
    with pytest.raises(ConfigError, match=r"^model.init_from: .*nope.ckpt does not exist"):
        _trainer().validate(_classifier(tmp_path / "nope.ckpt"), dataloaders=_loader(_pair_batch()))
    ckpt = torch.load(path, weights_only=False)
    state = ckpt["state_dict"]
    ckpt["state_dict"] = {k.replace("net.encoder.", "net.decoder.", 1): v for k, v in state.items()}
    torch.save(ckpt, tmp_path / "lm.ckpt")  # e.g. a decoder-only LM checkpoint
    with pytest.raises(ConfigError, match=r"^model.init_from: .*lm.ckpt holds no encoder weights"):
        _trainer().validate(_classifier(tmp_path / "lm.ckpt"), dataloaders=_loader(_pair_batch()))


def test_init_from_is_refused_outside_the_encoder() -> None:
    with pytest.raises(ConfigError, match=r"^model.init_from: .*only for arch=encoder"):
        validate_model_config({"arch": "decoder", "init_from": "x.ckpt"})
