"""Networks a user might write, for tests/test_custom.py: imported by a sweep only when the
test allows it (``--allow-import user_networks``)."""

import torch
from torch import nn

from ntksweep import layers as nl


def composed(width, depth, out_dim, activation="relu", bias_std=0.1):
    """An MLP as a composition: the limit comes with it."""
    hidden = [nl.serial(nl.Dense(width, bias_std=bias_std), nl.Activation(activation))
              for _ in range(depth - 1)]
    return nl.serial(*hidden, nl.Dense(out_dim, bias_std=bias_std))


class _Residual(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.inp = nn.Linear(2, width)
        self.mid = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
        self.out = nn.Linear(width, 1)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.out(h + self.mid(h))


def plain(width, depth, out_dim):
    """A torch module of the user's own: no limit."""
    return _Residual(width)


def wrong_signature(size):
    return nn.Linear(size, 1)


def wrong_inputs(width, depth, out_dim):
    return nn.Linear(3, out_dim)          # the circle's points have 2 features


def not_a_network(width, depth, out_dim):
    return 42


def raises(width, depth, out_dim):
    raise ValueError("width must be even")


def attending(width, depth, out_dim, query_key_std):
    """A transformer whose attention logits' scale is a trial field its function names."""
    from ntksweep.layers.presets import transformer

    return transformer(width, depth, out_dim, query_key_std=query_key_std)


def pooled(width, depth, out_dim):
    """A small conv net of the user's with average pooling: its limit over pixel pairs."""
    return nl.serial(nl.Conv(width), nl.Activation("relu"), nl.AvgPool(2), nl.Conv(width),
                     nl.Activation("relu"), nl.GlobalAvgPool(), nl.Dense(out_dim))
