"""DeepScaleLM to docs/norms.md §7, §7c and §8.22: lambda / beta constants and their identity, the
variance-preserving init of the authors' code (weight statistics, the token-correlation recursion
behind W^V / W^O, dropout, a unit-variance FFN and attention branch), a residual stream that keeps
unit-order variance at depth 48 where Pre-LN's grows ~40x, and both placements, in all three
architectures."""

from __future__ import annotations

import math

import pytest
import torch

from normlab.config import validate_model_config
from normlab.errors import ConfigError
from normlab.models.init import build_model, materialize
from normlab.norms.deepscalelm import (
    ScaledPostNormResidual,
    ScaledPreNormResidual,
    deepscalelm_constants,
    relu_correlation,
    stream_correlations,
    value_out_std,
)

ARCHS = ["decoder", "encoder", "encoder_decoder"]
V = 50


def _model(
    arch: str,
    depth: int,
    d_model: int = 32,
    d_ffn: int | None = None,
    seed: int = 0,
    norm: str = "deepscalelm",
    **extra,
):
    cfg = validate_model_config(
        {
            "arch": arch,
            "norm": norm,
            "depth": depth,
            "d_model": d_model,
            "n_heads": 4,
            "d_ffn": d_ffn or 4 * d_model,
            **extra,
        }
    )
    return materialize(build_model(cfg, vocab_size=V), "cpu", seed=seed)


def _stacks(model):
    return [
        s
        for s in (getattr(model, "encoder", None), getattr(model, "decoder", None))
        if s is not None and hasattr(s, "layers")
    ]


def test_constants_n24_k2() -> None:
    """docs/norms.md §8.22: N = 24, k = 2 -> beta = 0.288675, lambda = 0.957427, lambda^2 + beta^2 = 1."""
    lam, beta = deepscalelm_constants(24, 2.0)
    assert beta == pytest.approx(0.288675, abs=5e-7)
    assert lam == pytest.approx(0.957427, abs=5e-7)
    assert lam**2 + beta**2 == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize(("depth", "k"), [(2, 2.0), (48, 2.0), (1000, 2.0), (100, 4.0), (1, 2.0)])
def test_fully_normalised_residual_identity(depth: int, k: float) -> None:
    lam, beta = deepscalelm_constants(depth, k)
    assert lam**2 + beta**2 == pytest.approx(1.0, rel=1e-12)
    assert beta**2 == pytest.approx(min(1.0, k / depth), rel=1e-12)  # clipped when N < k


@pytest.mark.parametrize("arch", ARCHS)
def test_pre_placement_constants_per_stack_and_final_norm(arch: str) -> None:
    """N is the depth of each stack: enc-dec depth 24 -> N = 12 per stack -> beta = sqrt(1/6)."""
    model = _model(arch, 24 if arch == "encoder_decoder" else 12)
    lam, beta = deepscalelm_constants(12)
    assert beta == pytest.approx(math.sqrt(1 / 6), rel=1e-12)
    for stack in _stacks(model):
        assert stack.final_norm is not None
        for block in stack.layers:
            for res in (block.self_attn_residual, block.cross_attn_residual, block.ffn_residual):
                if res is not None:
                    assert type(res) is ScaledPreNormResidual
                    assert res.lam == pytest.approx(lam, rel=1e-12)
                    assert res.beta == pytest.approx(beta, rel=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
def test_post_placement_normalises_every_sublayer_without_final_norm(arch: str) -> None:
    model = _model(arch, 4, norm_args={"placement": "post"})
    for stack in _stacks(model):
        assert stack.final_norm is None
        assert all(type(b.ffn_residual) is ScaledPostNormResidual for b in stack.layers)
    if arch == "decoder":
        h = model.hidden(torch.randint(0, V, (2, 8)))
        assert h.var(-1, unbiased=False).mean().item() == pytest.approx(1.0, abs=1e-3)


def test_residual_formulas_by_hand() -> None:
    res = _model("decoder", 8).decoder.layers[0].ffn_residual
    x, f = torch.randn(2, 5, 32), torch.nn.Linear(32, 32)
    lam, beta = deepscalelm_constants(8)
    torch.testing.assert_close(res(x, f), lam * x + beta * f(res.norm(x)))
    post = ScaledPostNormResidual(res.norm, lam, beta)
    torch.testing.assert_close(post(x, f), res.norm(lam * x + beta * f(x)))


def test_init_statistics() -> None:
    """d = 256, d_ffn = 1024: fc1 and fc2 std (d * d_ffn / 2)^(-1/4) = 0.052556 (sigma_f^2 =
    sqrt(1/2)/d for d_ffn = 4d, the authors' value); W^Q, W^K std d^-1/2 = 0.0625; layer 0's W^V
    and W^O (sqrt(1/0.221)/d)^(1/2) = 0.091155 (+-5%)."""
    d = 256
    model = _model("decoder", 8, d_model=d)
    block = model.decoder.layers[0]
    assert (0.5 * d * 4 * d) ** -0.25 == pytest.approx(0.052556, abs=5e-7)
    assert ((0.5 * d * 4 * d) ** -0.25) ** 2 == pytest.approx(math.sqrt(0.5) / d, rel=1e-12)
    assert block.ffn.fc1.weight.std().item() == pytest.approx(0.052556, rel=0.05)
    assert block.ffn.fc2.weight.std().item() == pytest.approx(0.052556, rel=0.05)
    w = block.self_attn.qkv_proj.weight
    for rows in (w[:d], w[d : 2 * d]):
        assert rows.std().item() == pytest.approx(0.0625, rel=0.05)
    for rows in (w[2 * d :], block.self_attn.out_proj.weight):
        assert rows.std().item() == pytest.approx(0.091155, rel=0.05)
    assert model.embed(torch.arange(V)).var().item() == pytest.approx(1.0, rel=0.1)  # unit-variance input


def test_token_correlation_recursion_by_hand() -> None:
    """N = 8 (lam^2 = 3/4, beta^2 = 1/4), r_0 = 0.221, p = 0: after attention 0.75 * 0.221 + 0.25 =
    0.41575; relu_corr(0.41575) = 0.554113 (the arc-cosine kernel (sqrt(1 - r^2) + (pi - acos r) r) / pi);
    after the FFN 0.75 * 0.41575 + 0.25 * 0.554113 = 0.450341. With p = 0.1 the start is 0.221 * 0.9."""
    assert relu_correlation(0.41575) == pytest.approx(0.554113, abs=1e-6)
    assert relu_correlation(1.0) == 1.0 and relu_correlation(0.0) == pytest.approx(1 / math.pi)
    lam, beta = deepscalelm_constants(8)
    assert stream_correlations(3, lam, beta, 0.221, 0.0) == pytest.approx(
        [0.221, 0.450341, 0.608053], abs=1e-6
    )
    assert stream_correlations(1, lam, beta, 0.221, 0.1) == pytest.approx([0.1989], abs=1e-12)
    assert value_out_std(256, 0.221, 0.0) == pytest.approx(0.0911553, abs=1e-7)
    assert value_out_std(64, 1.0, 0.0) == 64**-0.5  # r = 1, p = 0: the fan-in init


def test_dropout_enters_ffn_and_attention_init() -> None:
    """p = 0.1, d = 256: fc1/fc2 std (0.9 / (0.5 * 256 * 1024))^(1/4) = 0.051190; layer 0's W^V std
    is unchanged (r_0 = 0.221 * 0.9, and (1 - p) / r_0 = 1 / 0.221); later layers' are not."""
    d = 256
    block = _model("decoder", 8, d_model=d, dropout=0.1).decoder.layers[0]
    assert block.ffn.fc1.weight.std().item() == pytest.approx(0.051190, rel=0.05)
    assert block.self_attn.qkv_proj.weight[2 * d :].std().item() == pytest.approx(0.091155, rel=0.05)
    with_p = _model("decoder", 8, d_model=32, dropout=0.1).norm_strategy.value_out_stds("decoder")
    without = _model("decoder", 8, d_model=32).norm_strategy.value_out_stds("decoder")
    assert with_p[0] == pytest.approx(without[0], rel=1e-12) and with_p[3] > without[3]


def test_fan_in_reading_equals_correlation_init_at_r_one() -> None:
    """attention_init=fan_in (N(0, 1/d)) is the correlation init with r_0 = 1 and p = 0: same weights."""
    a = _model("encoder", 6, norm_args={"attention_init": "fan_in"})
    b = _model("encoder", 6, norm_args={"input_correlation": 1.0})
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
    c = _model("encoder", 6)
    assert not torch.equal(
        c.encoder.layers[0].self_attn.out_proj.weight, a.encoder.layers[0].self_attn.out_proj.weight
    )


def _correlated_tokens(r: float, batch: int = 64, tokens: int = 64, d: int = 256) -> torch.Tensor:
    """Unit-variance tokens whose pairwise correlation is r (a shared part plus an own part)."""
    g = torch.Generator().manual_seed(3)
    shared = torch.randn(batch, 1, d, generator=g)
    return math.sqrt(r) * shared + math.sqrt(1 - r) * torch.randn(batch, tokens, d, generator=g)


@pytest.mark.parametrize(
    ("attention_init", "low", "high"), [("correlation", 0.8, 1.3), ("fan_in", 0.15, 0.35)]
)
def test_attention_branch_variance_at_the_input_correlation(
    attention_init: str, low: float, high: float
) -> None:
    """Tokens with correlation r_0 = 0.221 into layer 0's self-attention (encoder, 64 tokens): the
    correlation init gives the branch unit variance (measured ~1.1: attention is not quite uniform);
    the fan-in init keeps only ~r_0 of it."""
    model = _model("encoder", 8, d_model=256, norm_args={"attention_init": attention_init})
    with torch.no_grad():
        out = model.encoder.layers[0].self_attn(_correlated_tokens(0.221))
    assert low < out.var().item() < high


def test_n_counts_sublayers() -> None:
    """n_counts=sublayers: N = 2 per layer (3 in an enc-dec decoder); 12 layers: N = 24, beta = 0.288675."""
    decoder = _model("decoder", 12, norm_args={"n_counts": "sublayers"}).norm_strategy.describe()["decoder"]
    assert decoder["N"] == 24 and decoder["beta"] == pytest.approx(0.288675, abs=5e-7)
    encdec = _model("encoder_decoder", 24, norm_args={"n_counts": "sublayers"}).norm_strategy.describe()
    assert encdec["encoder"]["N"] == 24 and encdec["decoder"]["N"] == 36
    assert _model("decoder", 12).norm_strategy.describe()["decoder"]["N"] == 12  # the default counts layers


def test_relu_ffn_branch_preserves_unit_variance() -> None:
    """Var[fc2(relu(fc1 x))] = d sigma^2 * 1/2 * d_ffn sigma^2 = 1 for unit-variance x (+-10%)."""
    d = 256
    ffn = _model("decoder", 1, d_model=d, activation="relu").decoder.layers[0].ffn
    x = torch.randn(4096, d)
    with torch.no_grad():
        assert ffn(x).var().item() == pytest.approx(1.0, rel=0.1)


def _stream_variance(norm: str) -> float:
    model = _model("decoder", 48, d_model=32, norm=norm, activation="relu")
    seen = {}
    model.decoder.final_norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    with torch.no_grad():
        model(torch.randint(0, V, (4, 16), generator=torch.Generator().manual_seed(0)))
    return seen["x"].var(-1, unbiased=False).mean().item()


def test_residual_stream_variance_stays_unit_order_at_depth_48() -> None:
    """At init the 48-layer DeepScaleLM stream keeps variance ~1 (measured 0.90 with the authors'
    W^V / W^O, 0.85 with fan-in ones; a GELU FFN gives 0.85 of ReLU's) while the Pre-LN stream grows
    to ~45."""
    assert 0.4 < _stream_variance("deepscalelm") < 1.2
    assert _stream_variance("preln") > 20.0


def test_arguments_are_validated() -> None:
    with pytest.raises(ConfigError, match="model.norm_args.placement: 'middle' is not one of pre, post"):
        _model("decoder", 2, norm_args={"placement": "middle"})
    with pytest.raises(ConfigError, match="model.norm_args.k: must be > 0"):
        _model("decoder", 2, norm_args={"k": 0})
    with pytest.raises(
        ConfigError, match="model.norm_args.attention_init: 'xavier' is not one of correlation, fan_in"
    ):
        _model("decoder", 2, norm_args={"attention_init": "xavier"})
    with pytest.raises(
        ConfigError, match="model.norm_args.n_counts: 'blocks' is not one of layers, sublayers"
    ):
        _model("decoder", 2, norm_args={"n_counts": "blocks"})
    with pytest.raises(ConfigError, match=r"model.norm_args.input_correlation: must be in \(0, 1\], got 0.0"):
        _model("decoder", 2, norm_args={"input_correlation": 0.0})
    assert _model("decoder", 24, norm_args={"k": 6}).norm_strategy.describe()["decoder"]["beta"] == 0.5


def test_the_decoder_of_an_encoder_decoder_counts_its_cross_attention() -> None:
    """Decoder layers have one more attention step (cross-attention): after layer 0, r = lam^2 (lam^2
    r_0 + beta^2) + beta^2 before the FFN, so r_1 is larger than without it."""
    lam, beta = deepscalelm_constants(8)
    r0, lam2, beta2 = 0.221, lam**2, beta**2
    r = lam2 * (lam2 * r0 + beta2) + beta2
    expected = lam2 * r + beta2 * relu_correlation(r)
    with_cross = stream_correlations(2, lam, beta, r0, 0.0, cross_attention=True)
    assert with_cross[1] == pytest.approx(expected, rel=1e-12)
    assert with_cross[1] > stream_correlations(2, lam, beta, r0, 0.0)[1]
    model = _model("encoder_decoder", 8)
    stds = model.norm_strategy.value_out_stds("decoder")
    assert stds[1] < model.norm_strategy.value_out_stds("encoder")[1]  # larger r, smaller std


def test_embedding_variance_is_one_minus_p_before_its_dropout() -> None:
    """The authors' (1 - p)/3 per table for BERT's three tables sums to 1 - p; one table here."""
    for p in (0.0, 0.1):
        model = _model("decoder", 4, d_model=64, dropout=p)
        assert model.embed(torch.arange(V)).var().item() == pytest.approx(1.0 - p, rel=0.1)
