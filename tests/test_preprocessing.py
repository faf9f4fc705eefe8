"""Tests of osteo_tf.preprocessing: tiny images with hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from osteo_tf import preprocessing as P


def _ramp_texture(n: int = 48) -> np.ndarray:
    """A smooth ramp plus a sinusoidal texture on its right half, in [0.05, 0.85]."""
    y, x = np.mgrid[0:n, 0:n] / n
    return (0.2 + 0.5 * x + 0.15 * np.sin(2 * np.pi * 4 * y) * (x > 0.5)).astype(np.float32)


# ------------------------------------------------------------------ input validation
def test_rejects_3d_image_naming_argument():
    with pytest.raises(ValueError, match=r"image must be a 2-D.*Received: image.shape=\(4, 4, 3\)"):
        P.mean_filter(np.zeros((4, 4, 3), np.float32))


def test_rejects_non_finite():
    img = np.zeros((4, 4), np.float32)
    img[1, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        P.median_filter(img)


def test_rejects_float_outside_unit_range():
    with pytest.raises(ValueError, match=r"\[0, 1\].*max=255"):
        P.equalize_hist(np.full((4, 4), 255.0))


def test_rejects_signed_int_dtype():
    with pytest.raises(TypeError, match="image.dtype=int32"):
        P.gaussian_denoise(np.zeros((4, 4), np.int32))


def test_uint8_and_uint16_map_full_range_to_unit():
    img8 = np.array([[0, 255]], np.uint8)
    img16 = np.array([[0, 65535]], np.uint16)
    np.testing.assert_array_equal(P.mean_filter(img8, size=1), [[0.0, 1.0]])
    np.testing.assert_array_equal(P.mean_filter(img16, size=1), [[0.0, 1.0]])


def test_even_filter_size_rejected():
    with pytest.raises(ValueError, match="size=4"):
        P.mean_filter(np.zeros((5, 5), np.float32), size=4)


# ------------------------------------------------------------------ filters
def test_mean_filter_spreads_impulse_over_3x3():
    img = np.zeros((5, 5), np.float32)
    img[2, 2] = 1.0
    expected = np.zeros((5, 5), np.float32)
    expected[1:4, 1:4] = 1.0 / 9.0
    out = P.mean_filter(img, size=3)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-7)


def test_median_filter_removes_single_outlier():
    img = np.full((5, 5), 0.5, np.float32)
    img[2, 3] = 1.0
    np.testing.assert_array_equal(P.median_filter(img, size=3), np.full((5, 5), 0.5, np.float32))


def test_smudge_is_large_mean_filter():
    img = _ramp_texture(32)
    np.testing.assert_array_equal(P.smudge(img, size=15), P.mean_filter(img, size=15))


def test_gaussian_denoise_keeps_constant_image():
    img = np.full((6, 6), 0.3, np.float32)
    np.testing.assert_allclose(P.gaussian_denoise(img, sigma=2.0), img, atol=1e-6)


# ------------------------------------------------------------------ intensity
def test_minmax_scale_arange():
    out = P.minmax_scale(np.arange(10.0).reshape(2, 5))
    np.testing.assert_allclose(out, (np.arange(10.0) / 9.0).reshape(2, 5), atol=1e-7)
    assert out.dtype == np.float32


def test_minmax_scale_constant_gives_zeros():
    np.testing.assert_array_equal(P.minmax_scale(np.full((3, 3), 7.0)), np.zeros((3, 3), np.float32))


def test_equalize_hist_range_and_monotonic():
    img = (np.arange(64, dtype=np.float32).reshape(8, 8) / 63.0) ** 3
    out = P.equalize_hist(img)
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() == pytest.approx(1.0)
    flat_in, flat_out = img.ravel(), out.ravel()
    order = np.argsort(flat_in, kind="stable")
    assert np.all(np.diff(flat_out[order]) >= 0)
    # a skewed (cubed) ramp becomes roughly uniform: the median moves to the middle
    assert np.median(out) == pytest.approx(0.5, abs=0.05)


def test_clahe_output_range_dtype_shape():
    out = P.clahe(_ramp_texture(32), clip_limit=0.02, tile_grid=4)
    assert out.shape == (32, 32) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_contrast_brightness_two_value_image_exact():
    img = np.array([[0.2, 0.6], [0.2, 0.6]], np.float32)  # mean 0.4
    np.testing.assert_allclose(P.adjust_contrast_brightness(img, contrast=0.5), [[0.1, 0.7]] * 2, atol=1e-6)
    np.testing.assert_allclose(P.adjust_contrast_brightness(img, brightness=-0.5), [[0.1, 0.3]] * 2, atol=1e-6)
    # study 01: contrast +30% (0.4 +- 0.26) then brightness -30% (x 0.7)
    out = P.adjust_contrast_brightness(img, contrast=0.3, brightness=-0.3)
    np.testing.assert_allclose(out, [[0.098, 0.462]] * 2, atol=1e-6)


def test_contrast_clips_to_unit_range():
    img = np.array([[0.0, 1.0]], np.float32)
    np.testing.assert_allclose(P.adjust_contrast_brightness(img, contrast=1.0), [[0.0, 1.0]])
    np.testing.assert_allclose(P.adjust_contrast_brightness(img, brightness=0.5), [[0.0, 1.0]])


def test_unsharp_overshoots_at_edge_and_keeps_flat():
    img = np.zeros((9, 16), np.float32) + 0.3
    img[:, 8:] = 0.7
    out = P.unsharp_sharpen(img, amount=0.5, radius=3)
    assert out[4, 7] < 0.3 and out[4, 8] > 0.7  # halo on both sides of the step
    flat = np.full((8, 8), 0.4, np.float32)
    np.testing.assert_allclose(P.unsharp_sharpen(flat), flat, atol=1e-6)
    np.testing.assert_array_equal(P.unsharp_sharpen(img, amount=0.0), img)


def test_resize_area_averages_blocks():
    img = np.kron(np.array([[0.0, 0.5], [0.25, 1.0]], np.float32), np.ones((2, 2), np.float32))
    img[0, 0] = 0.2  # first block now averages to 0.05
    out = P.resize(img, 2)
    np.testing.assert_allclose(out, [[0.05, 0.5], [0.25, 1.0]], atol=1e-6)


def test_resize_tuple_is_height_width():
    assert P.resize(np.zeros((10, 12), np.float32), (3, 5), interpolation="bilinear").shape == (3, 5)
    with pytest.raises(ValueError, match="interpolation"):
        P.resize(np.zeros((4, 4), np.float32), 2, interpolation="cubic")


@pytest.mark.parametrize("shape_in,shape_out", [((2, 2), (4, 4)), ((3, 5), (7, 4)), ((48, 48), (256, 256)),
                                                ((64, 61), (224, 299)), ((96, 96), (31, 32)), ((1, 7), (5, 3))])
def test_resize_nearest_takes_the_pixel_whose_centre_is_nearest_as_scikit_image(shape_in, shape_out):
    from skimage.transform import resize as sk_resize

    mask = np.random.default_rng(0).random(shape_in) > 0.5
    ref = sk_resize(mask.astype(np.float64), shape_out, order=0, mode="edge", anti_aliasing=False,
                    preserve_range=True) > 0.5
    out = P.nearest_indices_take(mask, shape_out)
    assert out.dtype == bool and np.array_equal(out, ref)
    np.testing.assert_array_equal(P.resize(mask.astype(np.float32), shape_out, interpolation="nearest"), ref)
    np.testing.assert_array_equal(P.resize(np.kron([[0.0, 1.0]], np.ones((1, 1))).astype(np.float32), (2, 4),
                                           interpolation="nearest"), [[0, 0, 1, 1], [0, 0, 1, 1]])


# ------------------------------------------------------------------ study 03 ROI
def _rect_and_speck() -> np.ndarray:
    img = np.zeros((40, 40), np.float32)
    img[10:30, 5:25] = 0.8  # the "bone": 20 x 20
    img[32:38, 32:38] = 0.9  # a brighter 6 x 6 speck that survives erosion
    return img


def test_largest_component_keeps_biggest_blob():
    mask = np.zeros((6, 8), bool)
    mask[0:2, 0:2] = True
    mask[3:6, 4:8] = True
    expected = np.zeros_like(mask)
    expected[3:6, 4:8] = True
    np.testing.assert_array_equal(P.largest_component(mask), expected)


def test_roi_bbox_half_open():
    mask = np.zeros((6, 8), bool)
    mask[2:4, 1:5] = True
    assert P.roi_bbox(mask) == (2, 1, 4, 5)
    with pytest.raises(ValueError, match="no foreground"):
        P.roi_bbox(np.zeros((3, 3), bool))


def test_bone_mask_explicit_threshold_no_erosion():
    img = _rect_and_speck()
    np.testing.assert_array_equal(P.bone_mask(img, threshold=0.5, erosion_radius=0), img > 0.5)


def test_bone_mask_erosion_shrinks_rectangle_by_radius():
    mask = P.bone_mask(_rect_and_speck(), erosion_radius=2)
    assert P.roi_bbox(P.largest_component(mask)) == (12, 7, 28, 23)


def test_roi_crop_picks_largest_component_exact_bbox():
    img = _rect_and_speck()
    crop, bbox = P.roi_crop(img, erosion_radius=2)
    assert bbox == (10, 5, 30, 25)
    np.testing.assert_array_equal(crop, img[10:30, 5:25])


def test_roi_crop_margin_clipped_to_image():
    _, bbox = P.roi_crop(_rect_and_speck(), erosion_radius=2, margin=12)
    assert bbox == (0, 0, 40, 37)


def test_roi_crop_without_foreground_warns_and_returns_whole_image():
    img = np.full((8, 8), 0.5, np.float32)
    with pytest.warns(UserWarning, match="no foreground"):
        crop, bbox = P.roi_crop(img)
    assert bbox == (0, 0, 8, 8)
    np.testing.assert_array_equal(crop, img)


# ------------------------------------------------------------------ noise and metrics
def test_psnr_identical_is_inf():
    img = _ramp_texture(16)
    assert P.psnr(img, img) == math.inf


def test_psnr_constant_offset_is_20db():
    img = np.full((8, 8), 0.4, np.float32)
    assert P.psnr(img, img + np.float32(0.1)) == pytest.approx(20.0, abs=1e-4)


def test_psnr_matches_formula_for_known_noise():
    clean = np.full((32, 32), 0.5, np.float32)
    noisy = P.add_gaussian_noise(clean, sigma=0.05, seed=3, clip=False)
    mse = np.mean((noisy.astype(np.float64) - 0.5) ** 2)
    assert P.psnr(clean, noisy) == pytest.approx(10 * np.log10(1.0 / mse), rel=1e-5)
    assert P.psnr(clean, noisy) == pytest.approx(26.02, abs=0.5)  # 20 log10(1 / 0.05)


def test_ssim_identical_is_one():
    img = _ramp_texture(16)
    assert P.ssim(img, img) == pytest.approx(1.0)


def test_add_gaussian_noise_seeded_and_sized():
    img = np.full((64, 64), 0.5, np.float32)
    a = P.add_gaussian_noise(img, sigma=0.1, seed=7)
    b = P.add_gaussian_noise(img, sigma=0.1, seed=7)
    np.testing.assert_array_equal(a, b)
    assert np.std(a - img) == pytest.approx(0.1, rel=0.05)
    assert a.dtype == np.float32 and a.min() >= 0.0 and a.max() <= 1.0


def test_estimate_noise_sigma_within_30_percent():
    noisy = P.add_gaussian_noise(_ramp_texture(48), sigma=0.1, seed=0)
    assert P.estimate_noise_sigma(noisy) == pytest.approx(0.1, rel=0.3)


# ------------------------------------------------------------------ denoisers
@pytest.fixture(scope="module")
def noisy_pair() -> tuple[np.ndarray, np.ndarray]:
    clean = _ramp_texture(48)
    return clean, P.add_gaussian_noise(clean, sigma=0.1, seed=0)


def test_bm3d_improves_psnr_with_estimated_sigma(noisy_pair):
    clean, noisy = noisy_pair
    out = P.bm3d_denoise(noisy)
    assert out.dtype == np.float32 and out.shape == clean.shape
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert P.psnr(clean, out) > P.psnr(clean, noisy) + 8.0


def test_bm3d_low_complexity_profile_improves_psnr(noisy_pair):
    clean, noisy = noisy_pair
    out = P.bm3d_denoise(noisy, sigma=0.1, profile="lc")
    assert P.psnr(clean, out) > P.psnr(clean, noisy) + 8.0


def test_bm3d_is_bit_reproducible_with_one_thread_per_image(noisy_pair):
    # bm4d's automatic threading (threads=0) changes the aggregation order: repeats differ by ~3e-7
    a = P.bm3d_denoise(noisy_pair[1], sigma=0.1, profile="lc")
    b = P.bm3d_denoise(noisy_pair[1], sigma=0.1, profile="lc")
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", [-1, 1.5, True])
def test_bm3d_rejects_bad_thread_count(noisy_pair, threads):
    with pytest.raises(ValueError, match="threads"):
        P.bm3d_denoise(noisy_pair[1], sigma=0.1, threads=threads)


def test_bm3d_rejects_string_profile_other_than_np_lc(noisy_pair):
    with pytest.raises(ValueError, match="profile='refilter'"):
        P.bm3d_denoise(noisy_pair[1], sigma=0.1, profile="refilter")


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_nlmeans_improves_psnr(noisy_pair, bit_depth):
    clean, noisy = noisy_pair
    out = P.nlmeans_denoise(noisy, bit_depth=bit_depth)
    assert out.dtype == np.float32
    assert P.psnr(clean, out) > P.psnr(clean, noisy) + 5.0


# ------------------------------------------------------------------ steps as data
def test_apply_steps_equals_manual_composition():
    img = _rect_and_speck()
    steps = [("mean_filter", {"size": 3}), ("equalize_hist", {}), ("roi_crop", {"erosion_radius": 2}),
             ("resize", {"size": 8}), ("minmax_scale", {})]
    manual = P.minmax_scale(P.resize(P.roi_crop(P.equalize_hist(P.mean_filter(img, size=3)),
                                                erosion_radius=2)[0], 8))
    np.testing.assert_array_equal(P.apply_steps(img, steps), manual)


def test_apply_steps_unknown_step():
    with pytest.raises(ValueError, match=r"Received: steps\[0\]\[0\]='blur'"):
        P.apply_steps(np.zeros((4, 4), np.float32), [("blur", {})])


def test_validate_steps_accepts_names_pairs_and_none_and_returns_fresh_dicts():
    params = {"size": 3}
    steps = [("mean_filter", params), "equalize_hist", ["median_filter", None]]
    out = P.validate_steps(steps)
    assert out == [("mean_filter", {"size": 3}), ("equalize_hist", {}), ("median_filter", {})]
    assert out[0][1] is not params
    assert P.validate_steps(None) == [] and P.validate_steps(()) == []


@pytest.mark.parametrize("steps, error, match", [
    (["blur"], ValueError, r"unknown preprocessing step 'blur'\. Expected one of \[.*Received: steps\[0\]='blur'"),
    ([("mean_filter", {}), ("blur", {})], ValueError, r"Received: steps\[1\]\[0\]='blur'"),
    ([("mean_filter",)], ValueError, r"steps\[0\] must be a step name or a \(name, params dict\) pair"),
    ([("mean_filter", 3)], ValueError, r"Received: steps\[0\]=\('mean_filter', 3\)"),
    ("mean_filter", TypeError, r"Received: steps='mean_filter'"),
])
def test_validate_steps_errors_name_the_bad_step(steps, error, match):
    with pytest.raises(error, match=match):
        P.validate_steps(steps)


def test_apply_steps_accepts_step_names():
    img = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(P.apply_steps(img, ["equalize_hist"]), P.equalize_hist(img))


def test_standardize_known_values_and_gain_offset_invariance():
    img = np.array([[0.2, 0.4], [0.6, 0.8]], np.float32)  # mean 0.5, std sqrt(0.05)
    out = P.standardize(img, clip_sd=3.0)
    sd = np.sqrt(0.05)
    expected = np.clip((img - 0.5) / (6 * sd) + 0.5, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.dtype == np.float32
    # exposure gain and offset are removed
    np.testing.assert_allclose(P.standardize(0.5 * img + 0.1), out, atol=1e-6)


def test_standardize_clips_and_handles_constant():
    img = np.zeros((4, 4), np.float32)
    img[0, 0] = 1.0  # 4 sd above the mean of 1/16
    out = P.standardize(img, clip_sd=1.0)
    assert out.max() == 1.0 and out.min() >= 0.0
    np.testing.assert_array_equal(P.standardize(np.full((3, 3), 0.3, np.float32)), np.full((3, 3), 0.5, np.float32))
    with pytest.raises(ValueError, match="clip_sd"):
        P.standardize(img, clip_sd=0)
