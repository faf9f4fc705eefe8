"""Tests of osteo_tf.cache: the content-addressed disk cache and the parallel map of steps."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from osteo_tf import cache as C
from osteo_tf import preprocessing as P


def _ramp_texture(n: int = 48) -> np.ndarray:
    """A smooth ramp plus a sinusoidal texture on its right half, in [0.05, 0.85]."""
    y, x = np.mgrid[0:n, 0:n] / n
    return (0.2 + 0.5 * x + 0.15 * np.sin(2 * np.pi * 4 * y) * (x > 0.5)).astype(np.float32)


@pytest.fixture(scope="module")
def noisy_pair() -> tuple[np.ndarray, np.ndarray]:
    clean = _ramp_texture(48)
    return clean, P.add_gaussian_noise(clean, sigma=0.1, seed=0)


@pytest.fixture()
def counting_step(monkeypatch):
    calls = {"n": 0}

    def _step(image, *, k=1):
        calls["n"] += 1
        return np.clip(image * 0.5 + 0.1 * k, 0, 1).astype(np.float32)

    monkeypatch.setitem(P.STEPS, "count_step", _step)
    return calls


def _images(n=3, size=8):
    rng = np.random.default_rng(0)
    return [rng.random((size, size)).astype(np.float32) for _ in range(n)]


def test_cache_second_call_skips_function(tmp_path, counting_step):
    cache = C.DiskCache(tmp_path)
    imgs = _images()
    first = C.map_cached("count_step", imgs, {"k": 1}, cache=cache, n_jobs=1)
    assert counting_step["n"] == 3
    second = C.map_cached("count_step", imgs, {"k": 1}, cache=cache, n_jobs=1)
    assert counting_step["n"] == 3 and cache.hits == 3
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_cache_changed_parameter_misses(tmp_path, counting_step):
    cache = C.DiskCache(tmp_path)
    imgs = _images(2)
    C.map_cached("count_step", imgs, {"k": 1}, cache=cache, n_jobs=1)
    out = C.map_cached("count_step", imgs, {"k": 2}, cache=cache, n_jobs=1)
    assert counting_step["n"] == 4
    np.testing.assert_allclose(out[0], np.clip(imgs[0] * 0.5 + 0.2, 0, 1))


def test_cache_key_independent_of_param_order_and_sensitive_to_dtype():
    img = np.zeros((2, 2), np.float32)
    k1 = C.DiskCache.key(img, "s", {"a": 1, "b": 2}, "1")
    assert k1 == C.DiskCache.key(img, "s", {"b": 2, "a": 1}, "1")
    assert k1 != C.DiskCache.key(img.astype(np.float64), "s", {"a": 1, "b": 2}, "1")
    assert k1 != C.DiskCache.key(img, "s", {"a": 1, "b": 2}, "2")


def test_cache_layout_and_no_temp_files(tmp_path, counting_step):
    cache = C.DiskCache(tmp_path)
    C.map_cached("count_step", _images(1), {}, cache=cache, n_jobs=1)
    files = list(tmp_path.rglob("*"))
    npys = [f for f in files if f.is_file()]
    assert len(npys) == 1 and npys[0].suffix == ".npy"
    assert npys[0].parent.name == npys[0].stem[:2]


def test_corrupted_cache_file_is_recomputed(tmp_path, counting_step):
    cache = C.DiskCache(tmp_path)
    imgs = _images(1)
    (expected,) = C.map_cached("count_step", imgs, {}, cache=cache, n_jobs=1)
    (entry,) = [f for f in tmp_path.rglob("*.npy")]
    entry.write_bytes(entry.read_bytes()[:40])  # a truncated, half-written file
    with pytest.warns(UserWarning, match="unreadable cache entry"):
        (again,) = C.map_cached("count_step", imgs, {}, cache=cache, n_jobs=1)
    assert counting_step["n"] == 2
    np.testing.assert_array_equal(again, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        C.map_cached("count_step", imgs, {}, cache=cache, n_jobs=1)  # repaired: a clean hit
    assert counting_step["n"] == 2


def test_parallel_map_equals_sequential(tmp_path):
    imgs = _images(4, 16)
    parallel = C.map_cached("mean_filter", imgs, {"size": 3}, cache=C.DiskCache(tmp_path), n_jobs=2)
    sequential = [P.mean_filter(im, size=3) for im in imgs]
    assert len(parallel) == 4
    for a, b in zip(parallel, sequential):
        np.testing.assert_array_equal(a, b)


def test_map_cached_unknown_step():
    with pytest.raises(ValueError, match="fn_name='nope'"):
        C.map_cached("nope", _images(1), {}, cache=False)


def test_cached_apply_steps_hits_and_matches(tmp_path):
    cache = C.DiskCache(tmp_path)
    imgs = _images(2, 16)
    steps = [("median_filter", {"size": 3}), ("resize", {"size": 8})]
    out = C.cached_apply_steps(imgs, steps, cache=cache, n_jobs=1)
    for a, im in zip(out, imgs):
        np.testing.assert_array_equal(a, P.apply_steps(im, steps))
    C.cached_apply_steps(imgs, steps, cache=cache, n_jobs=1)
    assert cache.hits == 2
    C.cached_apply_steps(imgs, [("median_filter", {"size": 3}), ("resize", {"size": 4})], cache=cache, n_jobs=1)
    assert cache.hits == 2 and cache.misses == 4


def test_map_cached_loads_paths_and_skips_unreadable(tmp_path):
    from PIL import Image

    pixels = np.array([[0, 51, 102], [153, 204, 255], [0, 255, 0]], np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"Skipped 1 of 2 files.*empty"):
        out = C.map_cached("minmax_scale", [tmp_path / "a.png", tmp_path / "empty.png"], {}, cache=False)
    np.testing.assert_allclose(out[0], pixels / 255.0, atol=1e-6)
    assert out[1] is None


def test_parallel_bm3d_equals_sequential(tmp_path, noisy_pair):
    imgs = [noisy_pair[1], noisy_pair[1][::-1].copy()]
    parallel = C.map_cached("bm3d_denoise", imgs, {"sigma": 0.1, "profile": "lc"}, cache=C.DiskCache(tmp_path),
                            n_jobs=2)
    for img, out in zip(imgs, parallel):
        np.testing.assert_array_equal(out, P.bm3d_denoise(img, sigma=0.1, profile="lc"))


def test_cache_key_scheme_is_stable_so_existing_entries_stay_valid():
    # the keys written before the cache left osteo_tf.preprocessing (same namespace tag and layout)
    img = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert C.DiskCache.key(img, "mean_filter", {"params": {"size": 3}}, "1;") == (
        "a02eb79470a7a6754c9274a553e19a822ea2c3888f7253b7f06e4b6e28eb3a2d")
    assert C.DiskCache.key(img, "apply_steps", {"steps": [["mean_filter", {"size": 3}]]}, "mean_filter:1;") == (
        "0354321cf86f7ea92b1a376c90de9fc99afc8b6c520938647239a310a8cbef35")


def test_cached_apply_steps_validates_steps_with_the_preprocessing_messages():
    with pytest.raises(ValueError, match=r"unknown preprocessing step 'blur'.*Received: steps\[0\]\[0\]='blur'"):
        C.cached_apply_steps(_images(1), [("blur", {})], cache=False)
