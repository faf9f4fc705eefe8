import numpy as np
import pandas as pd
import pytest

tf = pytest.importorskip("tensorflow")

from osteo_tf import augment, io, pipeline  # noqa: E402


def _write(tmp_path, n=12, size=40, classes=("normal", "osteoporosis")):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = classes[i % len(classes)]
        img = np.clip(rng.random((size, size)) * 0.5 + 0.4 * (i % 2), 0, 1).astype(np.float32)
        p = tmp_path / label / f"img{i:02d}.png"
        io.save_png(img, p)
        rows.append({"path": str(p), "label": label, "group": f"p{i // 2}"})
    return pd.DataFrame(rows)


def test_batches_have_model_shape_and_one_hot_labels(tmp_path):
    m = _write(tmp_path)
    ds = pipeline.make_dataset(m, class_names=["normal", "osteoporosis"], image_size=32, batch_size=5)
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [5, 5, 2]
    x, y = batches[0]
    assert x.shape == (5, 32, 32, 1) and x.dtype == tf.float32  # grey: what every registry model takes
    assert float(tf.reduce_min(x)) >= 0 and float(tf.reduce_max(x)) <= 1
    np.testing.assert_array_equal(y.numpy()[:2], [[1, 0], [0, 1]])


def test_eval_pipeline_is_deterministic_and_matches_inference(tmp_path):
    m = _write(tmp_path)
    kw = dict(class_names=["normal", "osteoporosis"], image_size=24, batch_size=4)
    a = np.concatenate([x.numpy() for x, _ in pipeline.make_dataset(m, **kw)])
    b = np.concatenate([x.numpy() for x, _ in pipeline.make_dataset(m, **kw)])
    np.testing.assert_array_equal(a, b)
    inf, ok = pipeline.load_for_inference(m["path"].tolist(), image_size=24)
    assert ok.all()
    np.testing.assert_array_equal(a, inf)  # train/inference parity of the deterministic steps


def test_training_split_is_shuffled_and_augmented_only_when_training(tmp_path):
    m = _write(tmp_path)
    aug = augment.training_augmenter(rotation_deg=20, seed=1)
    kw = dict(class_names=["normal", "osteoporosis"], image_size=24, batch_size=12)
    (x_eval, y_eval), = list(pipeline.make_dataset(m, **kw))
    (x_train, y_train), = list(pipeline.make_dataset(m, training=True, augmenter=aug, seed=0, **kw))
    assert not np.array_equal(y_eval.numpy(), y_train.numpy()) or not np.array_equal(x_eval.numpy(), x_train.numpy())
    # same multiset of labels: shuffling, not resampling
    np.testing.assert_array_equal(np.sort(y_eval.numpy().argmax(1)), np.sort(y_train.numpy().argmax(1)))
    with pytest.warns(UserWarning, match="training=False"):
        pipeline.make_dataset(m, augmenter=aug, **kw)


def test_bad_image_is_skipped_not_fatal(tmp_path, caplog):
    m = _write(tmp_path, n=4)
    bad = tmp_path / "normal" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    m = pd.concat([m, pd.DataFrame([{"path": str(bad), "label": "normal", "group": "px"}])], ignore_index=True)
    ds = pipeline.make_dataset(m, class_names=["normal", "osteoporosis"], image_size=16, batch_size=8)
    x, y = next(iter(ds))
    assert x.shape[0] == 4
    assert "broken.png" in caplog.text


def test_truncated_grey_png_on_the_native_path_is_skipped(tmp_path):
    m = _write(tmp_path, n=4)
    assert all(pipeline.native_decodable(p) for p in m["path"])
    data = (tmp_path / "normal" / "img00.png").read_bytes()
    bad = tmp_path / "normal" / "cut.png"
    bad.write_bytes(data[: len(data) // 2])  # valid header, truncated image data
    assert pipeline.native_decodable(str(bad))
    m = pd.concat([m, pd.DataFrame([{"path": str(bad), "label": "normal", "group": "px"}])], ignore_index=True)
    ds = pipeline.make_dataset(m, class_names=["normal", "osteoporosis"], image_size=16, batch_size=8)
    x, _ = next(iter(ds))
    assert x.shape[0] == 4
    _, ok = pipeline.load_for_inference(m["path"].tolist(), image_size=16)
    assert ok.tolist() == [True, True, True, True, False]


def test_native_png_decode_is_bitwise_load_xray(tmp_path):
    rng = np.random.default_rng(1)
    for bits in (8, 16):
        img = rng.random((20, 30)).astype(np.float32)
        p = tmp_path / f"g{bits}.png"
        io.save_png(img, p, bit_depth=bits)
        assert pipeline.native_decodable(str(p))
        np.testing.assert_array_equal(pipeline.fast_decode(str(p)), io.load_xray(p))
        (a, _), = list(pipeline.image_dataset([str(p)], image_size=(20, 30)))
        np.testing.assert_array_equal(a.numpy(), io.load_xray(p))


def test_binary_and_int_label_modes():
    y = pipeline.encode_labels(["a", "b", "b"], ["a", "b"], label_mode="binary")
    np.testing.assert_array_equal(y, [[0.0], [1.0], [1.0]])
    assert pipeline.encode_labels(["b", "a"], ["a", "b"], label_mode="int").tolist() == [1, 0]
    with pytest.raises(ValueError, match="not in class_names"):
        pipeline.encode_labels(["c"], ["a", "b"])
    with pytest.raises(ValueError, match="2 classes"):
        pipeline.encode_labels(["a"], ["a", "b", "c"], label_mode="binary")


def test_unknown_step_and_missing_column_are_clear_errors(tmp_path):
    m = _write(tmp_path, n=2)
    with pytest.raises(ValueError, match="unknown preprocessing step 'blur'"):
        pipeline.make_dataset(m, class_names=["normal", "osteoporosis"], steps=["blur"])
    with pytest.raises(ValueError, match="no column 'path'"):
        pipeline.make_dataset(m.drop(columns="path"), class_names=["normal", "osteoporosis"])


@pytest.mark.parametrize("dtype, tol", [("float16", 2.5e-4), ("uint16", 1e-5), ("uint8", 2.5e-3), ("float32", 0.0)])
def test_compact_cache_round_trip_is_bounded_and_has_a_numpy_twin(tmp_path, dtype, tol):
    m = _write(tmp_path, n=6)
    kw = dict(class_names=["normal", "osteoporosis"], image_size=24, batch_size=4)
    exact = np.concatenate([x.numpy() for x, _ in pipeline.make_dataset(m, cache_dtype="float32", **kw)])
    for training in (False, True):
        ds = pipeline.make_dataset(m, cache_dtype=dtype, training=training, **kw)
        for _ in range(2):  # the second pass reads the cache
            got = np.concatenate([x.numpy() for x, _ in ds])
            assert got.dtype == np.float32 and got.shape == exact.shape
        if not training:
            assert np.abs(got - exact).max() <= tol
            np.testing.assert_array_equal(got, pipeline.cache_round_trip(exact, dtype))
    assert pipeline.cache_bytes(10, 24, dtype=dtype) * 12 // {"float16": 2, "uint16": 2, "uint8": 1, "float32": 4}[dtype] \
        == pipeline.cache_bytes(10, 24, dtype="float32", channels=3)
    with pytest.raises(ValueError, match="cache_dtype"):
        pipeline.make_dataset(m, cache_dtype="int4", **kw)


def _study_steps():
    from osteo_tf.workflows import study02, study03

    return {"study01": [], "study02": list(study02.STEPS), "study03": list(study03.STEPS),
            "study03_smudged": study03.preprocessing_steps(smudge_size=15), "study04": [], "study05": []}


@pytest.mark.parametrize("study", sorted(_study_steps()))
def test_each_study_pipeline_yields_batches(tmp_path, study):
    """Trains nothing: pulls one batch from every study's preprocessing + augmentation."""
    m = _write(tmp_path, n=6, size=48)
    aug = augment.augmenter_for(study[:7], seed=0) if study[:7] in ("study04", "study05") else None
    mode = "binary" if study == "study04" else "categorical"
    ds = pipeline.make_dataset(m, class_names=["normal", "osteoporosis"], image_size=32, batch_size=3,
                               steps=_study_steps()[study], training=True, augmenter=aug,
                               label_mode=mode, cache=str(tmp_path / f"{study}.cache"))
    x, y = next(iter(ds))
    assert x.shape == (3, 32, 32, 1)
    assert np.isfinite(x.numpy()).all()
    assert y.shape == ((3, 1) if mode == "binary" else (3, 2))


def test_every_element_is_preprocess_image_of_load_xray(tmp_path):
    """The tf.data map (OpenCV decode for grey PNGs, load_xray otherwise, then the area resize)
    gives preprocess_image(load_xray(path)) for every file, at a shrinking, non-integer size."""
    rng = np.random.default_rng(3)
    paths = []
    for k, (bits, shape) in enumerate([(8, (97, 131)), (16, (256, 256)), (8, (40, 40))]):
        p = tmp_path / f"g{k}.png"
        io.save_png(rng.random(shape).astype(np.float32), p, bit_depth=bits)
        paths.append(str(p))
    rgb = tmp_path / "rgb.png"
    from PIL import Image

    Image.fromarray((rng.random((50, 60, 3)) * 255).astype(np.uint8)).save(rgb)
    paths.append(str(rgb))
    assert [pipeline.native_decodable(p) for p in paths] == [True, True, True, False]
    got = [img.numpy() for img, ok in pipeline.image_dataset(paths, image_size=(37, 41))]
    for p, g in zip(paths, got):
        np.testing.assert_array_equal(g, pipeline.preprocess_image(io.load_xray(p), image_size=(37, 41)))
    assert all(g.shape == (37, 41) and 0.0 <= g.min() and g.max() <= 1.0 for g in got)


def test_steps_are_checked_by_the_one_preprocessing_validator():
    with pytest.raises(ValueError, match=r"unknown preprocessing step 'blur'.*Received: steps\[1\]\[0\]='blur'"):
        pipeline.preprocess_image(np.zeros((4, 4), np.float32), image_size=4, steps=["equalize_hist", ("blur", {})])
    out = pipeline.preprocess_image(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4), image_size=4,
                                    steps=[("equalize_hist", None)])
    assert out.shape == (4, 4)
