"""Study 01 workflow: the clean protocol's split (no papermill)."""

from osteo_tf import splits
from osteo_tf.workflows import study01


def test_clean_protocol_validates_and_tests_on_originals_of_patients_it_never_trained_on(tmp_path):
    S = study01.Settings.for_profile("smoke", patients=24)
    ctx = study01.setup(S, out_dir=tmp_path / "out", seed=0)
    n = len(ctx.manifest)
    out = study01.protocol_split(ctx, "C", "clean", val=0.25)
    counts = out["split"].value_counts().to_dict()
    assert set(counts) == {"train", "val", "test"}
    patients = {part: set(out.loc[out["split"] == part, "group"]) for part in counts}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    assert not (patients["val"] & patients["test"])
    # one original image per validation or test patient; set C multiplies the training images
    assert counts["val"] == len(patients["val"]) and counts["test"] == len(patients["test"])
    assert counts["train"] > 2 * len(patients["train"])
    assert len(patients["train"]) + len(patients["val"]) + len(patients["test"]) == n
    splits.assert_no_leakage(out)
    # without a validation share the clean protocol is train/test only, as in the paper's layout
    plain = study01.protocol_split(ctx, "N", "clean")
    assert set(plain["split"]) == {"train", "test"}
