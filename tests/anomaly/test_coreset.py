"""Greedy coreset: the requested size, far points kept; memory bank distances equal brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from mmfusion.config import ConfigError
from mmfusion.heads.patchcore.coreset import coreset_size, greedy_coreset
from mmfusion.heads.patchcore.memory_bank import MemoryBank


def test_coreset_has_the_requested_size_and_keeps_far_points():
    generator = torch.Generator().manual_seed(0)
    crowd = torch.randn(2000, 48, generator=generator) * 0.1  # (2000, 48) near the origin
    outliers = torch.randn(5, 48, generator=generator) + 20.0  # far from the crowd and from each other
    outliers[:, :5] += torch.arange(5.0)[:, None] * 10.0
    features = torch.cat([crowd, outliers])
    chosen = greedy_coreset(features, 12, projection_dim=16)
    assert chosen.shape == (12,) and len(set(chosen.tolist())) == 12
    assert set(range(2000, 2005)) <= set(chosen.tolist())


def test_coreset_covers_the_features_better_than_a_random_subset():
    features = torch.randn(3000, 32, generator=torch.Generator().manual_seed(1))
    chosen = greedy_coreset(features, 100)
    random_pick = torch.randperm(3000, generator=torch.Generator().manual_seed(2))[:100]
    coverage = [MemoryBank(features[i]).distances(features).max() for i in (chosen, random_pick)]
    assert coverage[0] < coverage[1]


@pytest.mark.parametrize(
    "total, ratio, size, expected", [(1000, 0.1, None, 100), (1000, 0.1, 7, 7), (10, 0.01, None, 1), (10, 0.5, 50, 10)]
)
def test_coreset_size_from_ratio_or_size(total, ratio, size, expected):
    assert coreset_size(total, ratio, size) == expected


def test_memory_bank_distances_equal_brute_force_and_survive_save(tmp_path):
    rng = np.random.default_rng(0)
    bank = MemoryBank(rng.normal(size=(300, 24)).astype(np.float16).astype(np.float32), "fp32")
    queries = rng.normal(size=(1000, 24)).astype(np.float32)
    expected = np.sqrt(((queries[:, None, :] - bank.features.numpy()[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(bank.distances(queries, chunk=128), expected, rtol=1e-4, atol=1e-4)
    bank.save(tmp_path)
    np.testing.assert_array_equal(MemoryBank.load(tmp_path, "fp32").distances(queries), bank.distances(queries))


@pytest.mark.parametrize("search", ["fp32", "bf16"])
@pytest.mark.parametrize("spread", [1.0, 0.05, 0.01])  # queries far from the bank's patches, and near them
def test_searches_match_float64_brute_force_on_off_centre_features(search, spread):
    rng = np.random.default_rng(1)
    features = (rng.normal(size=(512, 152)) + 3.0).astype(np.float16).astype(np.float32)  # off-centre, like ReLU6 maps
    queries = features[rng.integers(0, 512, 2000)] + spread * rng.normal(size=(2000, 152)).astype(np.float32)
    expected = cdist(queries.astype(np.float64), features.astype(np.float64)).min(axis=1)
    bank = MemoryBank(features, search)
    assert bank.precision == search
    np.testing.assert_allclose(bank.distances(queries, chunk=300), expected, rtol=1e-4)


def test_search_setting_is_checked_and_auto_follows_the_cpu(monkeypatch):
    import mmfusion.heads.patchcore.memory_bank as memory_bank

    with pytest.raises(ConfigError, match="search: 'int4'; expected one of auto, fp32, bf16"):
        MemoryBank(np.ones((4, 3), np.float32), "int4")
    monkeypatch.setattr(memory_bank, "cpu_bf16_products", lambda: False)
    assert MemoryBank(np.ones((4, 3), np.float32)).precision == "fp32"
    monkeypatch.setattr(memory_bank, "cpu_bf16_products", lambda: True)
    assert MemoryBank(np.ones((4, 3), np.float32)).precision == "bf16"
