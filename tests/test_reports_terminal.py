"""The terminal side of ``osteo-tf run`` and ``make lab``: the quiet kernel, progress lines and bars."""

import json
import logging
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from osteo_tf import _kernel, _progress, reports

ROOT = Path(__file__).resolve().parent.parent


def test_kernelspec_runs_the_quiet_launcher_with_the_logging_environment(tmp_path):
    path = _kernel.install_kernel(str(tmp_path))
    spec = json.loads((Path(path) / "kernel.json").read_text())
    assert Path(path) == tmp_path / "share" / "jupyter" / "kernels" / "osteo-tf"
    assert spec["display_name"] == "Python (osteo-tf)"
    assert spec["argv"][0] == sys.executable
    assert spec["argv"][1:] == ["-Xfrozen_modules=off", "-m", "osteo_tf._kernel", "-f", "{connection_file}"]
    assert spec["env"]["TF_CPP_MIN_LOG_LEVEL"] == "3"
    assert "TF_ENABLE_ONEDNN_OPTS" not in spec["env"], "oneDNN changes numerics: it stays on"
    assert reports.KERNEL_NAME == _kernel.KERNEL_NAME == "osteo-tf"


def test_the_native_log_pattern_matches_tensorflows_start_up_lines_only():
    native = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796138558.757922   25995 port.cc:153] oneDNN custom operations are on. You may see",
        "I0000 00:00:1796138558.759568   25995 cudart_stub.cc:31] Could not find cuda drivers on your machine",
        "E0000 00:00:1796138562.536208   25995 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
        "appropriate compiler flags.",
    ]
    kept = ["/x.py:3: UserWarning: keep me", "Traceback (most recent call last):", "ImportError: no module"]
    assert all(_kernel.NATIVE_LOG.match(line) for line in native)
    assert not any(_kernel.NATIVE_LOG.match(line) for line in kept)


def test_import_quietly_keeps_other_stderr_lines(tmp_path, monkeypatch):
    module = tmp_path / "noisy_mod.py"
    module.write_text(
        "import os\n"
        "os.write(2, b'I0000 00:00:1.5   7 port.cc:153] oneDNN custom operations are on.\\n')\n"
        "os.write(2, b'a real problem\\n')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    read, write = os.pipe()
    saved = os.dup(2)
    os.dup2(write, 2)
    try:
        assert _kernel.import_quietly("noisy_mod")
        assert not _kernel.import_quietly("no_such_module_here")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(write)
    with os.fdopen(read) as fh:
        assert fh.read() == "a real problem\n"


def test_make_lab_starts_jupyterlab_on_the_notebooks_after_the_install():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^lab: \$\(STAMP\)$", makefile, re.M), "make lab depends on the install stamp"
    dry = subprocess.run(["make", "-n", "-W", "requirements-dev.txt", "lab"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    lab = [i for i, line in enumerate(dry) if line.startswith(".venv/bin/jupyter lab ")]
    assert lab and "--ServerApp.root_dir=notebooks" in dry[lab[0]]
    install = [i for i, line in enumerate(dry) if "pip install" in line and "requirements-dev.txt" in line]
    kernel = [i for i, line in enumerate(dry) if "install_kernel()" in line]
    assert install and kernel and install[0] < kernel[0] < lab[0], dry
    assert re.search(r"^jupyterlab==[\d.]+$", (ROOT / "requirements-dev.txt").read_text(), re.M)


def test_format_duration():
    assert [reports.format_duration(s) for s in (0.4, 19.2, 74, 3599.6, 7500)] == [
        "0 s", "19 s", "1 min 14 s", "1 h 00 min", "2 h 05 min"]


def test_one_progress_line_per_study_with_position_and_total(tmp_path, monkeypatch):
    import papermill

    def fake_execute(src, dst, **kwargs):
        assert kwargs["progress_bar"]["leave"] is False and kwargs["progress_bar"]["disable"] is None
        nb = nbformat.read(src, as_version=4)
        nbformat.write(nb, dst)

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    lines = []
    runs = reports.run_studies(["00", "01"], profile="smoke", out=tmp_path, progress=lines.append)
    assert [r.status for r in runs] == ["ok", "ok"]
    assert lines[0] == f"running 2 studies (smoke profile) -> {tmp_path.resolve()}"
    assert re.fullmatch(r"\[1/2\] 00-dataset-card ok in \d+ s \(total \d+ s\)", lines[1]), lines
    assert re.fullmatch(r"\[2/2\] 01-calcaneus-augmentation ok in \d+ s \(total \d+ s\)", lines[2]), lines
    assert len(lines) == 3


def test_jobs_run_studies_at_once_longest_first_and_return_them_in_order(tmp_path, monkeypatch):
    import threading

    import papermill

    (tmp_path / "03-knee-same-domain-transfer").mkdir()  # a previous run's time: started first
    (tmp_path / "03-knee-same-domain-transfer" / "status.json").write_text('{"status": "ok", "seconds": 300}')
    started, running, peak, lock = [], [0], [0], threading.Lock()
    both = threading.Barrier(2, timeout=30)

    def fake_execute(src, dst, **kwargs):
        assert kwargs["progress_bar"]["disable"] is True  # no interleaved bars
        with lock:
            started.append(Path(dst).stem)
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        if len(started) <= 2:
            both.wait()  # the first two really overlap
        nbformat.write(nbformat.read(src, as_version=4), dst)
        with lock:
            running[0] -= 1

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    lines = []
    runs = reports.run_studies(["00", "01", "03"], profile="smoke", out=tmp_path, progress=lines.append, jobs=2)
    assert [r.study for r in runs] == ["00-dataset-card", "01-calcaneus-augmentation", "03-knee-same-domain-transfer"]
    assert [r.status for r in runs] == ["ok"] * 3
    assert started[2] == "01-calcaneus-augmentation" and peak[0] == 2  # 03 (300 s last time) went first
    assert lines[0] == f"running 3 studies (smoke profile, 2 at a time) -> {tmp_path.resolve()}"
    assert sorted(ln.split()[1] for ln in lines[1:]) == [r.study for r in runs]
    assert all(re.fullmatch(r"\[\d/3\] \S+ ok in \d+ s \(total \d+ s\)", ln) for ln in lines[1:]), lines
    assert (tmp_path / "index.html").exists()
    with pytest.raises(ValueError, match="jobs must be a positive integer"):
        reports.run_studies(["00"], profile="smoke", out=tmp_path, jobs=0)


def test_progress_without_a_terminal_is_the_plain_iterable(monkeypatch, tmp_path):
    with open(tmp_path / "log.txt", "w") as fh:
        monkeypatch.setattr(sys, "stderr", fh)
        items = [1, 2, 3]
        assert _progress.terminal_stream() is None
        assert _progress.progress(items, desc="x") is items
    assert (tmp_path / "log.txt").read_text() == ""


def test_progress_draws_on_a_terminal(monkeypatch):
    master, slave = pty.openpty()
    try:
        with os.fdopen(os.dup(slave), "w") as fake_stderr:
            monkeypatch.setattr(sys, "stderr", fake_stderr)
            assert list(_progress.progress(range(3), desc="bm3d", unit="image")) == [0, 1, 2]
            _progress._stream_on.cache_clear()
        drawn = _read_available(master)
    finally:
        os.close(master)
        os.close(slave)
    assert "bm3d" in drawn and "image" in drawn


def _tiny_models(n):
    import keras

    return [keras.Sequential([keras.Input((8, 8, 1)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax")]) for _ in range(n)]


def test_predict_and_lime_forward_trace_once_per_model_and_log_no_retracing(caplog, monkeypatch):
    """Batches of several sizes (the last one smaller) reuse ONE trace per model, and a loop over
    models logs no "frequent retracing" notice, with no filter in place. Keras' own predict, in
    the same loop, does log it (the contrast this fix exists for)."""
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.eager.polymorphic_function import polymorphic_function as pf

    from osteo_tf import training
    from osteo_tf.explain.lime import ModelPredictor

    x = np.random.default_rng(0).random((11, 8, 8, 1)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(11))).batch(4)  # 4, 4, 3
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        monkeypatch.setattr(pf, "_frequent_tracing_detector_manager", pf._FrequentTracingDetectorManager())
        for model in _tiny_models(6):
            p = training.predict_proba(model, ds)
            assert p.shape == (11, 2)
            np.testing.assert_allclose(p, np.asarray(model(x, training=False)), rtol=1e-5, atol=1e-6)
            assert training.compiled_forward(model).experimental_get_tracing_count() == 1
            training.predict_proba(model, x, batch_size=5)  # arrays: 5, 5, 1
            assert training.compiled_forward(model).experimental_get_tracing_count() == 1
            predictor = ModelPredictor(model, batch_size=4)
            for n in (11, 3, 8):
                assert predictor(np.repeat(x[:n], 3, axis=-1)).shape == (n, 2)
            assert predictor._forward.experimental_get_tracing_count() == 1
        ours = [r.getMessage() for r in caplog.records if "retracing" in r.getMessage()]
        monkeypatch.setattr(pf, "_frequent_tracing_detector_manager", pf._FrequentTracingDetectorManager())
        for model in _tiny_models(6):
            model.predict(ds, verbose=0)
        keras_predict = [r.getMessage() for r in caplog.records if "retracing" in r.getMessage()]
    assert ours == []
    assert keras_predict, "Keras' predict step retraces in this loop: the test would not see a regression"


def _read_available(fd: int, wait: float = 0.5) -> str:
    out, end = b"", time.monotonic() + wait
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out.decode(errors="replace")


def test_a_kernel_on_a_terminal_keeps_native_logs_and_progress_out_of_the_notebook(tmp_path):
    """papermill on a pseudo-terminal, as ``osteo-tf run`` in a shell: the terminal shows the
    progress bar and no TensorFlow native line; the executed notebook holds neither, and shows
    its figure inline although the launcher imported TensorFlow (and so matplotlib) first."""
    reports.ensure_kernel()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import tensorflow as tf\n"
        "from osteo_tf._progress import progress\n"
        "print(float(tf.reduce_sum(tf.constant([1.0, 2.0]))))\n"
        "print(sum(progress(range(3), desc='bar-in-kernel', unit='image')))"),
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([1, 2]);"),
        nbformat.v4.new_code_cell("tf.get_logger().warning('a-python-tf-warning')")]
    nb.metadata["kernelspec"] = {"name": "osteo-tf", "display_name": "Python (osteo-tf)", "language": "python"}
    src, dst = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, str(src))
    # as in a shell: ipykernel does not capture fd 2 into the notebook when PYTEST_CURRENT_TEST is set
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTEST_CURRENT_TEST")}
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, papermill; papermill.execute_notebook(sys.argv[1], sys.argv[2], "
         "kernel_name='osteo-tf', progress_bar=False)", str(src), str(dst)],
        stdin=slave, stdout=slave, stderr=slave, env=env, cwd=tmp_path)
    os.close(slave)
    terminal = ""
    try:
        while proc.poll() is None:
            terminal += _read_available(master, 0.2)
        terminal += _read_available(master, 0.2)
    finally:
        os.close(master)
    assert proc.returncode == 0, terminal
    outputs = [o for c in nbformat.read(str(dst), as_version=4).cells for o in c.outputs]
    texts = "".join(o.get("text", "") for o in outputs)
    assert "3.0\n3\n" in texts
    assert [o for o in outputs if "image/png" in o.get("data", {})], "figures are shown inline (MPLBACKEND set)"
    stderr = [o["text"] for o in outputs if o.get("name") == "stderr"]
    assert stderr == ["WARNING:tensorflow:a-python-tf-warning\n"], "TensorFlow's Python logger writes to the notebook"
    assert "a-python-tf-warning" not in terminal
    assert "bar-in-kernel" in terminal, (repr(terminal), texts)
    for native in ("oneDNN", "cuInit", "cuda drivers", "absl::InitializeLog", "without encryption", "IPKernelApp"):
        assert native not in terminal and native not in texts, (native, terminal)
