"""Benchmark inputs made in code (no download): folders of textured grey PNGs, reused across runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def texture(rng: np.random.Generator, size: int, hurst: float) -> np.ndarray:
    """A spectral fractional-Brownian texture in [0, 1] (cheap stand-in for a radiograph)."""
    f = np.fft.fftfreq(size)
    k = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    k[0, 0] = 1.0
    noise = rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))
    field = np.real(np.fft.ifft2(noise * k ** -(hurst + 1)))
    field -= field.min()
    return (field / max(field.max(), 1e-9)).astype(np.float32)


def png_folder(n: int, size: int, root: Path, seed: int = 0) -> Path:
    """``root/<class>/<i>.png`` with ``n`` images of ``size`` px in two class folders (created once)."""
    from osteo_tf.io import save_png

    folder = Path(root) / f"png{n}-{size}px-seed{seed}"
    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(seed)
    for i in range(n):
        label = ("normal", "osteoporosis")[i % 2]
        save_png(texture(rng, size, 0.55 + 0.15 * (i % 2)), folder / label / f"{i:05d}.png")
    done.write_text("ok\n")
    return folder


def warm_page_cache(folder: Path) -> None:
    """Read every file once so both contenders start with the same (hot) OS cache."""
    for p in sorted(Path(folder).rglob("*.png")):
        p.read_bytes()
