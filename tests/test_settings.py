"""osteo_tf.settings and every study's Settings: profiles, overrides, validation, the report table."""

import dataclasses
import importlib
import json

import pytest

from osteo_tf import settings
from osteo_tf.settings import StudySettings

WORKFLOWS = ["dataset_card", "study01", "study02", "study03", "study04", "study05", "leakage_audit"]
COMMON = {"preset", "weights", "allow_random_init", "strategy", "classes", "respect_source_split"}


def _settings_class(name):
    return importlib.import_module(f"osteo_tf.workflows.{name}").Settings


@dataclasses.dataclass(frozen=True, kw_only=True)
class Toy(StudySettings):
    epochs: int
    rate: float
    names: tuple[str, ...]
    sigmas: tuple[float, ...]
    flag: bool

    PROFILES = {
        "smoke": {"epochs": 1, "rate": 0.1, "names": ("a",), "sigmas": (0.1,), "flag": False},
        "full": {"epochs": 30, "rate": 0.001, "names": ("a", "b"), "sigmas": (0.1, 0.2), "flag": True},
    }

    def check(self):
        settings.positive(self, "epochs")
        settings.choice(self, "names", ("a", "b", "c"))


def test_none_keeps_the_profile_value_and_zero_is_not_a_default():
    assert Toy.for_profile("smoke", epochs=None).epochs == 1
    with pytest.raises(ValueError, match=r"epochs must be positive. Received: epochs=0"):
        Toy.for_profile("smoke", epochs=0)
    assert Toy.for_profile("smoke", names="").names == ()  # "" is an empty list, not "the default"


def test_papermill_values_are_converted_to_the_field_types():
    s = Toy.for_profile("smoke", names="a, c", sigmas="0.05,0.2", rate=1)
    assert s.names == ("a", "c") and s.sigmas == (0.05, 0.2) and s.rate == 1.0 and isinstance(s.rate, float)
    assert Toy.for_profile("smoke", names=["b"]).names == ("b",)


@pytest.mark.parametrize("overrides,match", [
    ({"epochs": "3"}, r"epochs must be int. Received: epochs='3'"),
    ({"epochs": True}, r"epochs must be int. Received: epochs=True"),
    ({"flag": "yes"}, r"flag must be bool. Received: flag='yes'"),
    ({"names": "a,z"}, r"names must be one of \['a', 'b', 'c'\]. Received: names=\('a', 'z'\)"),
    ({"preset": "tough"}, r"preset must be one of .*Received: preset='tough'"),
    ({"epoch": 3}, r"Unknown setting\(s\) \['epoch'\]"),
])
def test_bad_values_name_the_field_what_is_allowed_and_what_was_received(overrides, match):
    with pytest.raises(ValueError, match=match):
        Toy.for_profile("smoke", **overrides)


def test_unknown_profile_and_frozen_instances():
    with pytest.raises(ValueError, match=r"profile must be one of \['smoke', 'full', 'full-smoke'\]. Received: profile='quick'"):
        Toy.for_profile("quick")
    s = Toy.for_profile("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.epochs = 5
    with pytest.raises(ValueError, match="epochs must be positive"):
        s.replace(epochs=-1)  # a copy is checked like a new instance


def test_table_marks_every_departure_from_the_full_profile_and_as_dict_is_json():
    t = Toy.for_profile("smoke", epochs=30).table().set_index("setting")
    assert list(t.index) == ["preset", "weights", "allow_random_init", "strategy", "classes", "respect_source_split",
                             "epochs", "rate", "names", "sigmas", "flag"]
    assert not t.loc["epochs", "differs"] and t.loc["rate", "differs"]
    assert t.loc["names", "this run"] == "a" and t.loc["names", "paper protocol (full profile)"] == "a, b"
    d = Toy.for_profile("smoke").as_dict()
    assert json.loads(json.dumps(d))["names"] == ["a"] and d["profile"] == "smoke"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_every_study_writes_each_profile_once_beside_its_settings(name):
    cls = _settings_class(name)
    assert issubclass(cls, StudySettings)
    assert set(cls.PROFILES) == {"smoke", "quick", "full"}
    fields = set(cls.field_names()) - COMMON
    for profile, values in cls.PROFILES.items():
        assert set(values) - COMMON == fields, (profile, sorted(fields ^ (set(values) - COMMON)))
        s = cls.for_profile(profile)
        assert s.profile == profile
        assert len(s.table()) == len(cls.field_names()) + (profile in cls.WITH_WEIGHTS)  # + "model choice"
        assert s.model_choice()  # every profile says which models run (the notebooks print it)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_every_study_rejects_an_unknown_setting(name):
    with pytest.raises(ValueError, match="Unknown setting"):
        _settings_class(name).for_profile("smoke", no_such_setting=1)


def test_shared_checks_name_the_bound_and_the_value():
    s = Toy.for_profile("smoke")
    with pytest.raises(ValueError, match=r"epochs must be at least 2 \(one fold is none\). Received: epochs=1"):
        settings.at_least(s, "epochs", 2, meaning="one fold is none")
    settings.at_least(s, "epochs", 1)
    with pytest.raises(ValueError, match=r"rate must be in \(0.2, 1.0\). Received: rate=0.1"):
        settings.in_range(s, "rate", 0.2, 1.0)
    settings.in_range(s, "rate", 0.1, 1.0, closed="low")
    with pytest.raises(ValueError, match=r"names must name at least one value"):
        settings.not_empty(s.replace(names=()), "names")
    with pytest.raises(ValueError, match=r"names must be one of \['resnet50'.*Received: names=\('a',\)"):
        settings.model_names(s, "names")  # "a" is no registered model


# how much runs, never what runs: the only fields full-smoke may change (tuples: a subset of full's)
FULL_SMOKE_SCALE = {"patients", "patients_a", "patients_b", "unlabeled_patients", "epochs", "pretrain_epochs",
                    "mask_epochs", "approach1_epochs", "approach2_epochs", "small_epochs", "tuner_epochs",
                    "select_epochs", "kfold", "lime_folds", "tuner_trials", "lime_samples", "lime_patients",
                    "denoise_images", "sanity_images", "explain_per_class", "roi_check_images", "sets",
                    "kfold_models", "baselines_b"}


@pytest.mark.parametrize("name", WORKFLOWS)
def test_full_smoke_is_the_full_profile_with_only_its_size_changed(name):
    cls = _settings_class(name)
    full, smoke = cls.for_profile("full"), cls.for_profile("full-smoke")
    assert smoke.profile == "full-smoke" and smoke.allow_random_init  # no ImageNet files offline: said in reports
    assert set(cls.FULL_SMOKE) <= FULL_SMOKE_SCALE, sorted(set(cls.FULL_SMOKE) - FULL_SMOKE_SCALE)
    for field in cls.field_names():
        ours, theirs = getattr(smoke, field), getattr(full, field)
        if field in cls.FULL_SMOKE:
            if isinstance(theirs, tuple):
                assert ours and set(ours) <= set(theirs), (field, ours, theirs)
            else:
                assert ours <= theirs, (field, ours, theirs)
        elif field != "allow_random_init":
            # models, image sizes, heads, recipes (optimizer, learning rate, batch size), steps...
            assert ours == theirs, (field, ours, theirs)
    every_model = {m for f in cls.field_names() if f.endswith("models") or f == "model"
                   for m in (getattr(full, f) if isinstance(getattr(full, f), tuple) else (getattr(full, f),))}
    smoke_models = {m for f in cls.field_names() if f.endswith("models") or f == "model"
                    for m in (getattr(smoke, f) if isinstance(getattr(smoke, f), tuple) else (getattr(smoke, f),))}
    assert smoke_models == every_model  # every paper model runs


def test_full_smoke_runtime_switches_are_the_full_profiles():
    from osteo_tf import config

    full, smoke = config.get_profile("full"), config.get_profile("full-smoke")
    assert (smoke.mixed_precision, smoke.xla, smoke.run_eagerly) == (full.mixed_precision, full.xla, full.run_eagerly)
    assert full.xla == "auto"  # XLA under op determinism decided by Keras' rule (config.XLA_DECISION)


def test_strategy_is_a_checked_setting_of_every_study():
    for name in WORKFLOWS:
        assert _settings_class(name).for_profile("smoke", strategy="mirrored").strategy == "mirrored"
    with pytest.raises(ValueError, match=r"strategy must be one of \['auto', 'none', 'mirrored', 'multiworker'\]"):
        _settings_class("study02").for_profile("smoke", strategy="tpu")


@pytest.mark.parametrize("study, paper_field, paper_models", [
    ("study01", "models", ("study01_cnn", "mobilenetv2")),
    ("study02", "model", "resnet50"),
    ("study04", "transfer_models", ("densenet121",)),
    ("study05", "models", ("efficientnetb0", "mobilenetv3small")),
])
def test_quick_profile_trains_the_paper_models_when_their_imagenet_files_are_on_disk(
        tmp_path, monkeypatch, study, paper_field, paper_models):
    import importlib

    from osteo_tf import models

    Settings = importlib.import_module(f"osteo_tf.workflows.{study}").Settings
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    standin = Settings.for_profile("quick")
    assert getattr(standin, paper_field) != paper_models
    choice = standin.table().set_index("setting").loc["model choice", "this run"]
    assert choice.startswith("Stand-in models") and str(tmp_path / "models") in choice
    needed = Settings.paper_weights("quick")
    assert needed and all(v is None for v in needed.values())
    size = Settings.for_profile("quick").image_size if study != "study01" else 96
    (tmp_path / "models").mkdir()
    for name in needed:  # where the README says to put them (the contents are not read here)
        (tmp_path / "models" / models.expected_weights_file(name, (size, size, 3))).write_bytes(b"")
    paper = Settings.for_profile("quick")
    assert getattr(paper, paper_field) == paper_models
    assert paper.table().set_index("setting").loc["model choice", "this run"].startswith(
        f"Paper models {', '.join(needed)} from their ImageNet weights")
    chosen = {k: standin.as_dict()[k] for k in Settings.WITH_WEIGHTS["quick"] if k in (paper_field, "mask_models")}
    overridden = Settings.for_profile("quick", **chosen)
    assert getattr(overridden, paper_field) == getattr(standin, paper_field)  # an explicit choice wins
    assert overridden.model_choice().startswith(f"The ImageNet files of the paper's {', '.join(needed)} are on disk")
    assert Settings.for_profile("full").table()["setting"].tolist()[-1] != "model choice"
