"""A stand-in for timm, for benchmarks/peers.py only (never a normlab dependency).

torchscale 0.3.0 imports ``timm.models.layers.drop_path`` for stochastic depth. timm 0.6.13 needs
torchvision, which does not install beside the pinned CPU torch, and the peers benchmark runs
torchscale at drop_path_rate 0, where the function is never called. This package provides just that
function (stochastic depth as in Huang et al. 2016) so torchscale imports without timm.
"""
