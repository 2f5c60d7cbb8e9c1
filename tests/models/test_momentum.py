"""Momentum encoder (EMA of every parameter, buffers copied) and the feature queue (ring buffer)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rswb.models.momentum import FeatureQueue, MomentumEncoder


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)
        self.temperature = nn.Parameter(torch.tensor(0.07))  # a bare parameter, the kind that gets missed

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).mean((2, 3))) / self.temperature


def test_every_parameter_follows_the_ema_and_buffers_are_copied():
    torch.manual_seed(0)
    online = Encoder()
    mom = MomentumEncoder(online, momentum=0.9)
    before = {k: v.clone() for k, v in mom.key.named_parameters()}
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online.train()
    online(torch.randn(5, 3, 8, 8))  # changes the batch-norm running statistics
    mom.update(online)
    online_params = dict(online.named_parameters())
    for name, p in mom.key.named_parameters():
        expected = 0.9 * before[name] + 0.1 * online_params[name]
        torch.testing.assert_close(p, expected, msg=f"{name} did not follow the EMA")
        assert not p.requires_grad
    torch.testing.assert_close(mom.key.bn.running_mean, online.bn.running_mean)
    assert set(before) == set(online_params)  # the bare temperature parameter is included
    out = mom(torch.randn(2, 3, 8, 8))
    assert not out.requires_grad


def test_update_refuses_a_different_encoder_and_bad_momentum():
    mom = MomentumEncoder(Encoder())
    other = Encoder()
    other.extra = nn.Linear(1, 1)
    with pytest.raises(KeyError, match="extra"):
        mom.update(other)
    with pytest.raises(ValueError):
        MomentumEncoder(Encoder(), momentum=1.0)


def test_queue_wraps_around_and_keeps_the_newest_entries():
    q = FeatureQueue(size=5, dim=2)
    assert q.contents()[0].shape == (0, 2)
    q.push(torch.arange(6.0).reshape(3, 2), torch.tensor([10, 11, 12]))
    feats, ids = q.contents()
    assert ids.tolist() == [10, 11, 12] and feats[2].tolist() == [4.0, 5.0]
    q.push(torch.arange(8.0).reshape(4, 2) + 100, torch.tensor([13, 14, 15, 16]))
    feats, ids = q.contents()
    # Slots 3, 4, 0, 1 were written: the oldest two (10, 11) are gone.
    assert sorted(ids.tolist()) == [12, 13, 14, 15, 16] and int(q.pointer) == 2
    q.push(torch.zeros(7, 2), torch.arange(7))  # larger than the queue: its last 5 rows remain
    assert sorted(q.contents()[1].tolist()) == [2, 3, 4, 5, 6]
    state = q.state_dict()
    assert {"features", "ids", "pointer", "count"} <= set(state)  # checkpointed with the task
    with pytest.raises(ValueError):
        q.push(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def test_feature_queue_keeps_two_id_columns():
    q = FeatureQueue(3, 2, id_columns=2)
    q.push(torch.ones(2, 2), torch.tensor([[0, 7], [1, 8]]))
    q.push(torch.zeros(2, 2), torch.tensor([[2, 9], [3, 7]]))
    feats, ids = q.contents()
    assert ids.tolist() == [[3, 7], [1, 8], [2, 9]] and feats.shape == (3, 2)
    with pytest.raises(ValueError, match="ids"):
        q.push(torch.ones(2, 2), torch.tensor([0, 1]))  # one column where the queue keeps two
