"""Copy detection at scale: ``datasets.copy_pairs`` vs a naive pairwise loop over the same hashes.

20,000 images (textures from ``_data.texture``, 96 px; every tenth is a copy of an earlier one,
made with one of the corpora's transforms: flip, rot90, brightness / contrast, JPEG
re-encoding, rescaling) are hashed with ``datasets.copy_hashes`` and grouped:

* ours: ``datasets.copy_pairs`` (blocked XOR + ``np.bitwise_count`` over all hashes at once);
* baseline: the textbook double loop over the SAME hashes (Python ints, ``(a ^ b).bit_count()``,
  every probe of image i against every probe of image j). It is timed on the first
  ``OSTEO_TF_BENCH_DEDUP_NAIVE_ROWS`` images (default 2,000) against all later ones and scaled by
  the pair count to all 20,000 x 19,999 / 2 pairs (a double loop's time is proportional to its
  pairs); the record says how many pairs were timed.

``details`` also holds the seconds to hash and to group the 20,000 images, whether every planted
copy was found, and the measured copy-hash distances behind ``datasets.COPY_THRESHOLD``: copies of
synthetic knee, calcaneus and DXA radiographs per transform (the largest distance) and between
radiographs of different patients (the smallest).

Run: ``osteo-tf bench --only dedup``.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np

N_IMAGES = 20_000
SIZE = 96
COPY_EVERY = 10


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def _jpeg(x: np.ndarray, quality: int = 60) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_u8(x)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf), np.float32) / 255.0


def _rescale(x: np.ndarray, factor: float) -> np.ndarray:
    from PIL import Image

    h, w = x.shape
    return np.asarray(Image.fromarray(_u8(x)).resize((round(w * factor), round(h * factor)), Image.BILINEAR),
                      np.float32) / 255.0


TRANSFORMS = {
    "flip": np.fliplr,
    "rot90": np.rot90,
    "rot270+flip": lambda x: np.fliplr(np.rot90(x, 3)),
    "brightness/contrast": lambda x: np.clip(1.25 * x - 0.08, 0, 1),
    "JPEG q60": _jpeg,
    "rescale 0.6": lambda x: _rescale(x, 0.6),
    "rescale 1.5": lambda x: _rescale(x, 1.5),
    "rot90 + JPEG q40 + rescale 0.4": lambda x: _rescale(_jpeg(np.rot90(x), 40), 0.4),
}


def _images(n: int) -> tuple[list[np.ndarray], dict[int, int]]:
    from _data import texture  # noqa: E402  (benchmarks/ is on sys.path)

    rng = np.random.default_rng(0)
    images, source_of = [], {}
    names = list(TRANSFORMS)
    for i in range(n):
        if i % COPY_EVERY == COPY_EVERY - 1:
            src = int(rng.integers(0, i))
            while src in source_of:
                src = source_of[src]
            images.append(np.asarray(TRANSFORMS[names[i % len(names)]](images[src]), np.float32))
            source_of[i] = src
        else:
            images.append(texture(rng, SIZE, float(rng.uniform(0.3, 0.9))))
    return images, source_of


def _naive(probes: list[list[int]], rows: int, threshold: int) -> tuple[float, int, list[tuple[int, int]]]:
    n = len(probes)
    found = []
    t0 = time.perf_counter()
    for i in range(rows):
        pi = probes[i]
        for j in range(i + 1, n):
            if min((p ^ q).bit_count() for p in pi for q in probes[j]) <= threshold:
                found.append((i, j))
    seconds = time.perf_counter() - t0
    pairs = sum(n - 1 - i for i in range(rows))
    return seconds, pairs, found


def copy_distance_study(patients: int = 60, seed: int = 1) -> dict:
    """Measured copy-hash distances on synthetic radiographs (one image per patient, 3 modes):
    the largest distance of a copy to its source per transform, and the smallest distance between
    images of different patients."""
    from osteo_tf import datasets, io as oio, synthetic

    out: dict = {"copies_max": {}, "distinct_min": {}, "distinct_p01": {}, "images": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("knee", "calcaneus", "dxa"):
            root = Path(tmp) / mode
            meta = synthetic.write_dataset(root, mode=mode, classes=2, patients=patients, seed=seed, images_per_patient=1)
            imgs = [oio.load_xray(root / p) for p in meta["path"]]
            probes = [datasets.copy_hashes(x) for x in imgs]
            words = datasets.pack_hashes(np.concatenate(probes))
            owners = np.repeat(np.arange(len(imgs)), [len(p) for p in probes])
            _, _, d = datasets.copy_pairs(words, owners, threshold=datasets.COPY_HASH_BITS)
            out["distinct_min"][mode] = int(d.min())
            out["distinct_p01"][mode] = float(np.percentile(d, 1))
            out["images"] += len(imgs)
            for name, fn in TRANSFORMS.items():
                worst = 0
                for x, p in zip(imgs, probes):
                    q = datasets.copy_hashes(np.asarray(fn(x), np.float32))
                    a, b = datasets.pack_hashes(p), datasets.pack_hashes(q)
                    dist = int(sum(np.bitwise_count(a[:, None, k] ^ b[None, :, k]) for k in range(a.shape[1])).min())
                    worst = max(worst, dist)
                out["copies_max"][name] = max(out["copies_max"].get(name, 0), worst)
    out["copies_max_overall"] = max(out["copies_max"].values())
    out["distinct_min_overall"] = min(out["distinct_min"].values())
    return out


def bench_dedup() -> dict:
    from osteo_tf import datasets

    rows = int(os.environ.get("OSTEO_TF_BENCH_DEDUP_NAIVE_ROWS", "2000"))
    images, source_of = _images(N_IMAGES)
    t0 = time.perf_counter()
    probes = [datasets.copy_hashes(x) for x in images]
    hash_seconds = time.perf_counter() - t0
    counts = np.array([len(p) for p in probes])
    words = datasets.pack_hashes(np.concatenate(probes))
    owners = np.repeat(np.arange(N_IMAGES), counts)

    t0 = time.perf_counter()
    a, b, _ = datasets.copy_pairs(words, owners, threshold=datasets.COPY_THRESHOLD)
    ours = time.perf_counter() - t0

    ints = [int.from_bytes(w.astype(">u8").tobytes(), "big") for w in words]
    per_image: list[list[int]] = [[] for _ in range(N_IMAGES)]
    for o, v in zip(owners, ints):
        per_image[o].append(v)
    naive_seconds, naive_pairs, naive_found = _naive(per_image, rows, datasets.COPY_THRESHOLD)
    total_pairs = N_IMAGES * (N_IMAGES - 1) // 2
    baseline = naive_seconds * total_pairs / naive_pairs
    ours_found = {(int(x), int(y)) for x, y in zip(a, b) if x < rows}
    planted = {(min(s, c), max(s, c)) for c, s in source_of.items()}
    found = set(zip(a.tolist(), b.tolist()))
    false_pairs = {(x, y) for x, y in found if source_of.get(x, x) != source_of.get(y, y)}  # different sources
    from osteo_tf.datasets import _components  # the grouping step find_dataset runs

    t0 = time.perf_counter()
    groups = _components(N_IMAGES, a, b)
    group_seconds = ours + time.perf_counter() - t0
    return {
        "baseline": round(baseline, 2), "ours": round(ours, 3), "unit": "s",
        "ratio": round(baseline / ours, 1), "target": 20.0,
        "details": {
            "images": N_IMAGES, "image_px": SIZE, "hashes": int(len(words)),
            "hash_bits": datasets.COPY_HASH_BITS, "threshold": datasets.COPY_THRESHOLD,
            "probes_per_image": round(float(counts.mean()), 3),
            "seconds_to_hash": round(hash_seconds, 2), "seconds_to_group": round(group_seconds, 3),
            "copy_groups": int((np.bincount(groups) >= 2).sum()),
            "planted_copies": len(planted), "planted_copies_found": len(planted & found),
            "pairs_of_different_sources": len(false_pairs),
            "naive_pairs_timed": naive_pairs, "naive_seconds_timed": round(naive_seconds, 2),
            "naive_agrees_on_timed_rows": ours_found == set(naive_found),
            "copy_distances": copy_distance_study(),
        },
    }


BENCHMARKS = {"dedup": bench_dedup}


if __name__ == "__main__":
    import json

    print(json.dumps(bench_dedup(), indent=2))
