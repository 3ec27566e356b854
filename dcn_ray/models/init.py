"""Seeded per-layer initialisation: one random stream per layer, named by the layer.

Pairing trials by seed only pairs when trials of one seed start alike. If every layer draws from
one global stream in module order, a deconvolution of another size consumes another number of
draws and every later layer starts elsewhere. Here each layer draws from its own generator,
seeded by the trial seed and the layer's name, so two models built with one seed share, bit for
bit, every layer whose name and shape they share (the DCN's trunk and its unchanged branches).
Works for any ``nn.Module``.

A layer given a *salt* draws from the generator of ``name~salt`` instead: a start drawn apart from
the unsalted model's, with the same shape. A sham control uses it to re-draw exactly what a guided
kernel change re-draws (the weak branch's deconvolution) while keeping the reference's kernels.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

import torch
from torch import nn


def layer_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and the layer ``name`` (stable across runs and machines)."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def init_layer(module: nn.Module, generator: torch.Generator) -> None:
    """He initialisation of one convolution or deconvolution; norms to identity; biases zero.

    A stride-s transposed convolution with kernel k sums in_channels x (k / s)^2 inputs into each
    output pixel (on average: k / s positions per axis), not in_channels x k^2 as
    ``kaiming_normal_`` counts for its weight (in, out, k, k). Its weights are drawn with variance
    2 s^2 / (in_channels k^2), which keeps the second moment of the activations from block to
    branch as the convolutions do (tests/test_training_options.py checks it without batch norm).
    """
    if isinstance(module, nn.ConvTranspose2d):
        in_channels, _, kh, kw = module.weight.shape
        sh, sw = module.stride
        fan = in_channels * kh * kw / (sh * sw)
        nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan), generator=generator)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.reset_parameters()
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.bias is not None:
        nn.init.zeros_(module.bias)


def init_weights(model: nn.Module, seed: int, salts: Mapping[str, str] | None = None) -> nn.Module:
    """Initialise every layer of ``model`` from its own generator (see the module docstring);
    a layer named in ``salts`` draws from the generator of ``name~salt``."""
    salts = dict(salts or {})
    unknown = set(salts) - {name for name, _ in model.named_modules()}
    if unknown:
        raise ValueError(f"salts name layers the model does not have: {sorted(unknown)}")
    with torch.no_grad():
        for name, module in model.named_modules():
            if any(True for _ in module.parameters(recurse=False)):
                salted = f"{name}~{salts[name]}" if name in salts else name
                init_layer(module, layer_generator(seed, salted))
    return model
