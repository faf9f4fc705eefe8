"""Distribution strategies: MirroredStrategy over two logical CPUs against one device, and
MultiWorkerMirroredStrategy as two worker processes on 127.0.0.1.

Both run in fresh interpreters: logical devices and a multi-worker cluster must be configured
before TensorFlow starts its runtime, which the test session has long done.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from osteo_tf import training

ROOT = Path(__file__).resolve().parent.parent

# A registry model trained a few steps on fixed random images; weights, predictions and the
# evaluation written as .npz / .json. ``MODE`` selects one device, two mirrored logical CPUs or
# one worker of a MultiWorkerMirroredStrategy cluster (TF_CONFIG set by the parent).
SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    mode, out = sys.argv[1], sys.argv[2]
    import tensorflow as tf
    from osteo_tf import config, models, training
    if mode == "mirrored":
        strategy = training.cpu_strategy(2)
    elif mode == "multiworker":
        strategy, kind = training.make_strategy("multiworker")
        assert kind == "multiworker"
    else:
        strategy = None
    config.seed_everything(0)
    n_rep = training.replicas(strategy)
    rng = np.random.default_rng(0)
    x = rng.random((32, 32, 32, 1), dtype=np.float32)
    y = np.eye(2, dtype=np.float32)[(x[:, :16].mean(axis=(1, 2, 3)) > x[:, 16:].mean(axis=(1, 2, 3))).astype(int)]
    # per-replica batch 8 // n_rep: the GLOBAL batch is 8 and the learning rate 0.05 for every mode
    rec = training.scale_recipe(training.Recipe("sgd", 0.05 / n_rep, 0.0, 8 // n_rep, 2, None, "loss"), n_rep)
    assert (rec.batch_size, round(rec.learning_rate, 6)) == (8, 0.05), rec
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(rec.batch_size)
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    ds = ds.with_options(opts)  # every worker sees the same global batches (the test compares them)
    build = lambda: models.build("compact_cnn", input_shape=(32, 32, 1), num_classes=2, weights=None,
                                 filters=(4, 8, 8, 8))
    model, res = training.train(build, ds, rec=rec, run_dir=out + "-run", strategy=strategy)
    p = training.predict_proba(model, tf.data.Dataset.from_tensor_slices(x).batch(8))
    np.savez(out + ".npz", *model.get_weights(), probs=p)
    json.dump({"replicas": n_rep, "steps": len(res.step_seconds),
               "loss": [float(v) for v in res.history["loss"]]}, open(out + ".json", "w"))
""")


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONHASHSEED": "0",
           "CUDA_VISIBLE_DEVICES": "", **extra}
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _run(script, mode, out, timeout=300):
    proc = subprocess.run([sys.executable, str(script), mode, str(out)], env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _load(out):
    with np.load(str(out) + ".npz") as z:
        weights = [z[f"arr_{i}"] for i in range(len(z.files) - 1)]
        probs = z["probs"]
    return weights, probs, json.loads(Path(str(out) + ".json").read_text())


def test_mirrored_strategy_on_two_logical_cpus_trains_close_to_one_device(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    _run(script, "one", tmp_path / "one")
    _run(script, "mirrored", tmp_path / "mirrored")
    w1, p1, info1 = _load(tmp_path / "one")
    w2, p2, info2 = _load(tmp_path / "mirrored")
    assert (info1["replicas"], info2["replicas"]) == (1, 2)
    assert info1["steps"] == info2["steps"] == 8  # 2 epochs x 32 / global batch 8
    # same global batch and learning rate: the same updates, up to BatchNorm statistics computed per
    # replica (4 images each instead of 8)
    assert np.allclose(info1["loss"], info2["loss"], atol=0.05), (info1["loss"], info2["loss"])
    assert np.abs(p1 - p2).max() < 0.1, np.abs(p1 - p2).max()
    moved = max(float(np.abs(a - b).max()) for a, b in zip(w1, w2))
    assert moved < 0.1, moved


def _free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_multiworker_strategy_two_workers_on_localhost_end_with_equal_weights(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    try:
        for i in range(2):
            cfg = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
            procs.append(subprocess.Popen(
                [sys.executable, str(script), "multiworker", str(tmp_path / f"worker{i}")],
                env=_env(TF_CONFIG=json.dumps(cfg)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outputs = [p.communicate(timeout=420) for p in procs]
        for p, (_, err) in zip(procs, outputs):
            assert p.returncode == 0, err[-3000:]
    finally:
        for p in procs:  # bounded: never leave a worker waiting for its peer
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    w0, p0, info0 = _load(tmp_path / "worker0")
    w1, p1, info1 = _load(tmp_path / "worker1")
    assert info0["replicas"] == info1["replicas"] == 2
    assert info0["steps"] == info1["steps"] == 8
    assert len(w0) == len(w1) and all(np.array_equal(a, b) for a, b in zip(w0, w1))
    init = _load_initial_differs(w0)
    assert init, "training moved the weights"
    assert np.array_equal(p0, p1)


def _load_initial_differs(weights):
    """Whether trained weights differ from a fresh build's (the workers did train)."""
    from osteo_tf import config, models

    config.seed_everything(0)
    fresh = models.build("compact_cnn", input_shape=(32, 32, 1), num_classes=2, weights=None,
                         filters=(4, 8, 8, 8)).get_weights()
    return any(not np.allclose(a, b) for a, b in zip(weights, fresh))


def test_make_strategy_checks_its_name_and_tf_config(monkeypatch):
    with pytest.raises(ValueError, match=r"strategy must be one of \['auto', 'none', 'mirrored', 'multiworker'\]"):
        training.make_strategy("tpu")
    monkeypatch.setenv("TF_CONFIG", "not json")
    monkeypatch.setattr(training, "_STRATEGIES", {})
    with pytest.raises(ValueError, match=r"strategy='multiworker' needs TF_CONFIG.*Received: TF_CONFIG='not json'"):
        training.make_strategy("multiworker")
    assert training.make_strategy("none") == (None, "none")
    assert training.make_strategy("auto") == (None, "none")  # no GPU here: one device


def test_scale_recipe_states_the_global_batch_and_learning_rate_rule():
    rec = training.Recipe("sgd", 1e-4, 0.9, 5, 20)
    assert training.scale_recipe(rec, 1) is rec
    two = training.scale_recipe(rec, 2)
    assert (two.batch_size, two.learning_rate, two.epochs) == (10, 2e-4, 20)
    with pytest.raises(ValueError, match="n_replicas must be >= 1"):
        training.scale_recipe(rec, 0)
