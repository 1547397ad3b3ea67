"""The Transformer core: every registered norm builds for all three architectures and trains
(forward + backward, finite); cached decoding equals full decoding; init covers every parameter
and is reproducible; activation checkpointing gives identical gradients."""

from __future__ import annotations

import pytest
import torch

from normlab.config import validate_model_config
from normlab.distributed import apply_activation_checkpointing
from normlab.models.init import build_model, init_weights, materialize
from normlab.norms import registered_names

ARCHS = ["decoder", "encoder", "encoder_decoder"]
V = 40


def make(arch: str, norm: str = "preln", depth: int = 4, seed: int = 0, **extra):
    cfg = validate_model_config(
        {"arch": arch, "norm": norm, "depth": depth, "d_model": 32, "n_heads": 4, "d_ffn": 64, **extra}
    )
    return materialize(build_model(cfg, vocab_size=V), "cpu", seed=seed)


def run(model, arch: str, ids: torch.Tensor) -> torch.Tensor:
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, -2:] = False  # some padding in the source
    if arch == "decoder":
        return model(ids)
    if arch == "encoder":
        return model(ids, mask)
    return model(ids, mask, ids[:, :6])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", registered_names())
def test_every_norm_builds_and_trains_for_every_arch(norm: str, arch: str) -> None:
    torch.manual_seed(0)
    model = make(arch, norm)
    ids = torch.randint(0, V, (3, 10))
    out = run(model, arch, ids)
    assert torch.isfinite(out).all()
    loss = out.float().pow(2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


@pytest.mark.parametrize("norm", ["postln", "preln", "deepnorm"])
def test_init_is_reproducible_and_seed_dependent(norm: str) -> None:
    a, b, c = make("decoder", norm, seed=1), make("decoder", norm, seed=1), make("decoder", norm, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["embed.weight"], sc["embed.weight"])


def test_init_refuses_a_parameter_nobody_declared() -> None:
    model = build_model(validate_model_config({"depth": 2, "d_model": 32}), vocab_size=V)
    model.to_empty(device="cpu")
    model.rogue = torch.nn.Module()
    model.rogue.weight = torch.nn.Parameter(torch.empty(3))
    with pytest.raises(RuntimeError, match="rogue|weight"):
        init_weights(model)


def test_embedding_has_unit_variance_after_scaling() -> None:
    model = make("decoder", d_model=32)
    x = model.embed(torch.arange(V))
    assert x.var().item() == pytest.approx(1.0, rel=0.15)


@pytest.mark.parametrize("norm", ["postln", "preln", "deepnorm"])
def test_decoder_cached_decoding_equals_full_forward(norm: str) -> None:
    model = make("decoder", norm, depth=3).eval()
    ids = torch.randint(0, V, (2, 9))
    full = model(ids)
    cache = [{} for _ in range(len(model.decoder.layers))]
    steps = [model(ids[:, :4], cache=cache)]
    for t in range(4, 9):
        steps.append(model(ids[:, t : t + 1], cache=cache, start=t))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pos", ["rope", "sinusoidal"])
def test_encoder_decoder_cached_decoding_equals_full_forward(pos: str) -> None:
    model = make("encoder_decoder", "deepnorm", depth=4, pos_encoding=pos).eval()
    src = torch.randint(0, V, (2, 7))
    src_mask = torch.ones_like(src, dtype=torch.bool)
    src_mask[1, -3:] = False
    tgt = torch.randint(0, V, (2, 6))
    memory = model.encode(src, src_mask)
    full = model.decode(tgt, memory, src_mask)
    cache = model.new_cache()
    steps = [model.decode(tgt[:, t : t + 1], memory, src_mask, cache=cache, start=t) for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_encoder_outputs_of_real_tokens() -> None:
    model = make("encoder", "preln").eval()
    ids = torch.randint(1, V, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[True] * 6 + [False] * 3])
    out_short = model(ids, torch.ones(1, 6, dtype=torch.bool))
    out_padded = model(padded, mask)[:, :6]
    torch.testing.assert_close(out_padded, out_short, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["full", "selective"])
@pytest.mark.parametrize("arch", ARCHS)
def test_activation_checkpointing_gives_identical_gradients(arch: str, mode: str) -> None:
    """Full and selective recompute (compute.activation_checkpointing) change memory, not numbers."""
    cfg = validate_model_config(
        {
            "arch": arch,
            "norm": "deepnorm",
            "depth": 4,
            "d_model": 32,
            "n_heads": 4,
            "d_ffn": 64,
            "dropout": 0.0,
        }
    )
    plain = materialize(build_model(cfg, V), "cpu", seed=5)
    ckpt = apply_activation_checkpointing(build_model(cfg, V), mode)
    materialize(ckpt, "cpu", seed=5)
    ids = torch.randint(0, V, (2, 8))
    for model in (plain, ckpt):
        run(model, arch, ids).float().pow(2).mean().backward()
    g_plain = {n: p.grad for n, p in plain.named_parameters()}
    g_ckpt = {n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in ckpt.named_parameters()}
    assert g_plain.keys() == g_ckpt.keys()
    for name, grad in g_plain.items():
        torch.testing.assert_close(g_ckpt[name], grad, atol=0, rtol=0)
    assert set(plain.state_dict()) == set(ckpt.state_dict())


def test_depth_1000_builds_on_meta_without_storage() -> None:
    cfg = validate_model_config({"norm": "deepnorm", "depth": 1000, "d_model": 32, "n_heads": 2, "d_ffn": 64})
    model = build_model(cfg, vocab_size=V)
    assert all(p.is_meta for p in model.parameters())
    assert len(model.decoder.layers) == 1000
    assert sum(p.numel() for p in model.parameters()) == 1000 * (
        4 * 32 * 32 + 2 * 32 * 64
    ) + V * 32 + 1000 * (3 * 32 + 32 + 64 + 32 + 4 * 32)  # weights + biases + 2 LayerNorms per layer


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_gelu_fc2_step_gives_bit_identical_gradients(threads: int, bias: bool) -> None:
    """FeedForward's GeluLinear (saves the fc1 output only, recomputes GELU in backward, computes its
    output into a tensor allocated before the GELU temporary) against the two autograd ops it
    replaces."""
    import torch.nn.functional as F

    from normlab.models.feedforward import GeluLinear

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a0, w0 = torch.randn(8, 64, 256, generator=g), 0.05 * torch.randn(64, 256, generator=g)
        b0, grad = torch.randn(64, generator=g), torch.randn(8, 64, 64, generator=g)
        results = []
        for fused in (False, True):
            a, w, b = (t.clone().requires_grad_() for t in (a0, w0, b0))
            b = b if bias else None
            y = GeluLinear.apply(a, w, b) if fused else F.linear(F.gelu(a), w, b)
            y.backward(grad)
            assert not fused or y._base is None  # a fresh tensor, which residual modules may add into
            results.append((y.detach(), a.grad, w.grad, b.grad if bias else a.grad))
    finally:
        torch.set_num_threads(before)
    for plain, fused in zip(*results, strict=True):
        assert torch.equal(plain, fused)
    a, w, b = (t.clone().requires_grad_() for t in (a0, w0, b0))
    (grad_w,) = torch.autograd.grad(GeluLinear.apply(a, w, b), w, grad)  # as backward returns it
    assert grad_w.stride() == w.stride()  # the weight's layout, so AccumulateGrad need not copy it


def test_gelu_fc2_step_saves_one_wide_tensor_fewer(monkeypatch) -> None:
    import normlab.models.feedforward as feedforward

    def wide_activations(model) -> int:
        params = {p.data_ptr() for p in model.parameters()}
        saved: list[torch.Tensor] = []
        ids = torch.randint(0, V, (2, 8))
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            model(ids)
        return sum(t.numel() == 2 * 8 * 64 and t.data_ptr() not in params for t in saved)  # tokens x d_ffn

    model = make("decoder", "preln", depth=1)
    fused = wide_activations(model)
    monkeypatch.setattr(feedforward, "_autocast_on", lambda t: True)  # the two-op path
    assert (fused, wide_activations(model)) == (1, 2)
