"""ResultCache and cache_key: byte-bounded LRU eviction, oversize values, key sensitivity, thread safety."""

from __future__ import annotations

import threading

import pytest

from mmfusion.serving.cache import ResultCache, cache_key


def test_least_recently_used_entries_are_evicted_to_fit_the_byte_bound():
    cache = ResultCache(max_bytes=10, sizeof=len)
    cache.put("a", "aaaa")
    cache.put("b", "bbbb")
    assert cache.get("a") == "aaaa"  # a is now more recent than b
    cache.put("c", "cccc")
    assert "b" not in cache and cache.get("a") == "aaaa" and cache.get("c") == "cccc"
    assert cache.bytes_used == 8 and len(cache) == 2
    cache.put("d", "dddddddd")  # needs 8 of 10 bytes: both a and c go
    assert len(cache) == 1 and cache.get("d") == "dddddddd" and cache.bytes_used == 8


def test_replacing_a_key_updates_bytes_used():
    cache = ResultCache(max_bytes=100, sizeof=len)
    cache.put("a", "x" * 30)
    cache.put("a", "x" * 10)
    assert cache.bytes_used == 10 and len(cache) == 1 and cache.get("a") == "x" * 10


def test_value_larger_than_the_bound_is_not_stored():
    cache = ResultCache(max_bytes=10, sizeof=len)
    cache.put("small", "12345")
    assert cache.put("huge", "x" * 11) is False
    assert cache.get("huge") is None and cache.get("small") == "12345" and cache.bytes_used == 5


def test_hits_and_misses_are_counted():
    cache = ResultCache(max_bytes=1 << 20)
    cache.put("k", {"verdict": "ok", "scores": [0.1, 0.9]})
    assert cache.get("k") == {"verdict": "ok", "scores": [0.1, 0.9]}
    assert cache.get("absent") is None
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.bytes_used > 0  # default size is the pickled length


def test_zero_bytes_disables_the_cache():
    cache = ResultCache(max_bytes=0)
    assert cache.put("k", "v") is False
    assert cache.get("k") is None and len(cache) == 0 and (cache.hits, cache.misses) == (0, 0)
    assert not cache.enabled


def test_negative_bound_is_rejected():
    with pytest.raises(ValueError, match="max_bytes=-1"):
        ResultCache(max_bytes=-1)


def test_key_changes_with_model_version_bytes_and_options():
    base = cache_key("defect", 1, b"\x89PNG...", {"heatmap": True, "threshold": 0.5})
    assert base == cache_key("defect", 1, b"\x89PNG...", {"threshold": 0.5, "heatmap": True})  # key order
    assert len(base) == 64 and int(base, 16) >= 0
    variants = {
        cache_key("other", 1, b"\x89PNG...", {"heatmap": True, "threshold": 0.5}),
        cache_key("defect", 2, b"\x89PNG...", {"heatmap": True, "threshold": 0.5}),
        cache_key("defect", 1, b"\x89PNG..!", {"heatmap": True, "threshold": 0.5}),
        cache_key("defect", 1, b"\x89PNG...", {"heatmap": False, "threshold": 0.5}),
        cache_key("defect", 1, b"\x89PNG...", {"heatmap": True}),
    }
    assert base not in variants and len(variants) == 5


def test_key_of_parts_respects_part_boundaries_and_types():
    assert cache_key("m", 1, [b"ab", b"c"], {}) != cache_key("m", 1, [b"a", b"bc"], {})
    assert cache_key("m", 1, [b"ab"], {}) != cache_key("m", 1, ["ab"], {})
    assert cache_key("m", 1, [b"image", "a caption"], None) == ResultCache.key("m", 1, [b"image", "a caption"], {})


def test_key_rejects_unusable_parts_and_options():
    with pytest.raises(ValueError, match="payload part 1"):
        cache_key("m", 1, [b"ok", 3], {})
    with pytest.raises(ValueError, match="cache options"):
        cache_key("m", 1, b"x", {"callback": object()})


def test_concurrent_puts_never_exceed_the_byte_bound():
    cache = ResultCache(max_bytes=1000, sizeof=len)
    overshoots = []

    def writer(worker: int) -> None:
        for index in range(500):
            cache.put(f"{worker}-{index}", "x" * (1 + (index * 7 + worker) % 90))
            if index % 20 == 0:
                cache.get(f"{worker}-{index // 2}")
            if cache.bytes_used > cache.max_bytes:
                overshoots.append(cache.bytes_used)

    threads = [threading.Thread(target=writer, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not overshoots
    assert 0 < cache.bytes_used <= 1000
    assert cache.bytes_used == sum(len(cache.get(key)) for key in list(cache._entries))
