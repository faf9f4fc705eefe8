"""Typed study settings: one frozen dataclass per study, one constructor per profile.

Each study workflow (``osteo_tf.workflows.studyNN``) declares ``Settings``, a frozen dataclass
derived from :class:`StudySettings`, with its profiles' values written once beside it as
``PROFILES`` (``{"smoke": {...}, "quick": {...}, "full": {...}}``). A notebook builds this run's
settings with::

    S = study02.Settings.for_profile(profile, epochs=epochs, model=model_name)

where an override of ``None`` keeps the profile's value: a notebook parameter that means "the
profile's value" defaults to ``None``. There are no sentinel values: ``0`` is zero, ``""`` is an
empty string (an empty list for list settings), and a choice such as "no smudging" is a setting
of its own.

Values are checked once, when a ``Settings`` is constructed: the field's type (with the few
conversions a papermill parameter needs, such as ``"a,b"`` for a tuple of names and an ``int``
for a ``float``), then the study's own rules (:meth:`StudySettings.check`). Every problem raises
``ValueError`` naming the field, what is allowed and ``Received: field=value``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar, Mapping, Sequence

import pandas as pd

PROFILE_NAMES = ("smoke", "quick", "full", "full-smoke")


def _received(name: str, value: Any) -> str:
    return f"Received: {name}={value!r}"


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple:
        return f"a comma-separated string or a list of {_type_name(args[0])}"
    if args:
        return " or ".join(_type_name(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """``value`` converted to the field type ``tp`` (int, float, str, bool, tuple[X, ...], unions)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _coerce(name, value, option)
            except ValueError:
                continue
        raise ValueError(f"{name} must be {_type_name(tp)}. {_received(name, value)}")
    if origin is tuple:
        item = args[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be {_type_name(tp)}. {_received(name, value)}")
        return tuple(_coerce(name, v, item) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _is_number(value):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this module does not know is a programming error
        raise TypeError(f"settings field {name} has an unsupported type {tp!r}")
    raise ValueError(f"{name} must be {_type_name(tp)}. {_received(name, value)}")


def _is_number(text: str) -> bool:
    """Whether ``text`` parses as a float (``"1e-3"`` from a comma-separated parameter)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudySettings:
    """Base of every study's ``Settings``: validation, profiles, the settings table.

    Attributes:
        profile: the profile these values start from (``smoke``, ``quick``, ``full`` or
            ``full-smoke``).
        preset: synthetic-data difficulty (``easy``, ``default``, ``hard``, ``realistic``);
            ignored when the study runs on a user's dataset.
        weights: ``"imagenet"`` or a weights file for the pretrained models.
        allow_random_init: when the ImageNet weights are not on disk, train from random
            initialisation (the report says so) instead of stopping.
        strategy: the ``tf.distribute`` strategy (``osteo_tf.training.make_strategy``): ``auto``
            (MirroredStrategy when more than one GPU is visible, else none), ``none``,
            ``mirrored`` (all local GPUs) or ``multiworker`` (MultiWorkerMirroredStrategy from
            ``TF_CONFIG``).
        classes: the classes the study uses: class names to keep, and merges written
            ``source=target`` (``"normal,osteoporosis,osteopenia=osteoporosis"`` files osteopenia
            under osteoporosis). Images of any other class are dropped and counted in the report.
            Each study's default is its paper's classes; ``()`` keeps every class found.
        respect_source_split: use the uploader's split folders (``train/``, ``val/``, ``test/``,
            manifest column ``source_split``) as this run's split instead of drawing a grouped
            split; a copy group that straddles them is moved whole to its earliest side.

    Subclasses add their own fields, set ``PROFILES`` and may override :meth:`check`.
    """

    profile: str
    preset: str = "default"
    weights: str = "imagenet"
    allow_random_init: bool = True
    strategy: str = "auto"
    classes: tuple[str, ...] = ()
    respect_source_split: bool = False

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    """The values of each profile for this study's fields (fields not named keep their default)."""

    FULL_SMOKE: ClassVar[Mapping[str, Any]] = {}
    """The ``full-smoke`` profile: the ``full`` profile's values with these replaced. Only how much
    runs (patients, epochs, folds, trials, samples) may change, never models, image sizes, heads
    or recipes; ``allow_random_init`` is set explicitly (there are no ImageNet files offline)."""

    WITH_WEIGHTS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    """Per CPU profile (``quick``): the values that replace the profile's stand-in models with the
    paper's (lighter ones, at reduced size) when the ImageNet weights files of every paper model
    they name are on disk (:meth:`paper_weights`); without them the profile's own values stay."""

    STANDIN_NOTE: ClassVar[str] = ""
    """What the CPU profiles' stand-in models are and how the report compares them, for :meth:`model_choice`."""

    STRATEGIES: ClassVar[tuple[str, ...]] = ("auto", "none", "mirrored", "multiworker")

    PRESETS: ClassVar[tuple[str, ...]] = ("easy", "default", "hard", "realistic")

    # --------------------------------------------------------------------------------------
    @classmethod
    def for_profile(cls, profile: str, **overrides: Any):
        """This study's settings for ``profile``, with ``overrides`` applied.

        Args:
            profile: ``smoke``, ``quick``, ``full`` or ``full-smoke``.
            **overrides: field values; ``None`` keeps the profile's value.

        Raises:
            ValueError: an unknown profile or field, or a value the field does not allow.
        """
        if profile not in cls.profile_names():
            raise ValueError(f"profile must be one of {cls.profile_names()}. {_received('profile', profile)}")
        known = cls.field_names()
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ValueError(f"Unknown setting(s) {unknown} for {cls.__module__}.{cls.__qualname__}. "
                             f"Known: {sorted(known)}")
        values = cls.profile_values(profile)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(profile=profile, **values)

    @classmethod
    def profile_names(cls) -> list[str]:
        """The profiles this study defines (``full-smoke`` whenever it defines ``full``)."""
        return list(cls.PROFILES) + (["full-smoke"] if "full" in cls.PROFILES else [])

    @classmethod
    def profile_values(cls, profile: str) -> dict[str, Any]:
        """The field values of ``profile`` (``full-smoke``: ``full``'s, updated by :attr:`FULL_SMOKE`)."""
        if profile == "full-smoke" and "full" in cls.PROFILES:
            return {**cls.PROFILES["full"], "allow_random_init": True, **cls.FULL_SMOKE}
        values = dict(cls.PROFILES[profile])
        if profile in cls.WITH_WEIGHTS and all(path is not None for path in cls.paper_weights(profile).values()):
            values.update(cls.WITH_WEIGHTS[profile])
        return values

    @classmethod
    def paper_weights(cls, profile: str) -> dict[str, Any]:
        """The ImageNet weights files the paper models of ``WITH_WEIGHTS[profile]`` need: model
        name -> the file found in ``$KERAS_HOME/models`` (``~/.keras/models``), or ``None`` when it
        is not there. Empty when the profile has no paper-model variant."""
        from osteo_tf import models

        if profile not in cls.WITH_WEIGHTS:
            return {}
        size = cls._paper_input_size(profile)
        return {name: models.local_weights_file(name, (size, size, 3)) for name in cls._paper_models(profile)}

    @classmethod
    def _paper_input_size(cls, profile: str) -> int:
        values = {**cls.PROFILES.get(profile, {}), **cls.WITH_WEIGHTS.get(profile, {})}
        return int(values.get("image_size") or values.get("baseline_size") or 224)

    @classmethod
    def _model_fields(cls, profile: str) -> dict[str, tuple[str, ...]]:
        """The fields of ``WITH_WEIGHTS[profile]`` that name registry models, each as a tuple of
        names (``model="resnet50"`` -> ``("resnet50",)``)."""
        known = cls._model_names()
        fields = {}
        for field_name, value in cls.WITH_WEIGHTS.get(profile, {}).items():
            names = tuple(n for n in (value if isinstance(value, tuple) else (value,)) if isinstance(n, str))
            if any(n in known for n in names):
                fields[field_name] = names
        return fields

    @classmethod
    def _paper_models(cls, profile: str) -> list[str]:
        """The registry models with Keras ImageNet weights that ``WITH_WEIGHTS[profile]`` names."""
        from osteo_tf import models

        names = [n for value in cls._model_fields(profile).values() for n in value
                 if n in models.names() and models.get_spec(n).imagenet]
        return list(dict.fromkeys(names))

    def model_choice(self) -> str:
        """One sentence for the report: which models this run trains and why (the paper's with
        their ImageNet weights, or stand-ins because the weights files are not on disk)."""
        if self.profile not in self.WITH_WEIGHTS:
            if self.profile in ("full", "full-smoke"):
                return "The paper's models, as its protocol names them (the settings table lists them)."
            return f"The {self.profile} profile's models (the settings table lists them)."
        from osteo_tf import models

        files = self.paper_weights(self.profile)
        paper = ", ".join(files)
        variant = {k: self.WITH_WEIGHTS[self.profile][k] for k in self._model_fields(self.profile)}
        if all(path is not None for path in files.values()):
            if all(getattr(self, k) == v for k, v in variant.items()):
                return (f"Paper models {paper} from their ImageNet weights (found: "
                        + ", ".join(str(p) for p in files.values()) + ").")
            return (f"The ImageNet files of the paper's {paper} are on disk, but this run's settings name "
                    f"{self.standin_models()}.")
        size = self._paper_input_size(self.profile)
        missing = [str(models.expected_weights_file(n, (size, size, 3))) for n, p in files.items() if p is None]
        standins = self.standin_models()
        instead = (f"so this profile trains {standins} in their place." if standins != "(none)"
                   else "so this profile runs without them.")
        return (f"Stand-in models: the ImageNet weights of the paper's {paper} are not on disk "
                f"({', '.join(missing)} in {models.keras_models_dir()}), {instead} {self.STANDIN_NOTE}").strip()

    def standin_models(self) -> str:
        """The models of this run that the paper-model variant would replace (:meth:`model_choice`)."""
        known = self._model_names()
        names = []
        for field_name, theirs in self._model_fields(self.profile).items():
            ours = getattr(self, field_name)
            for name in (ours if isinstance(ours, tuple) else (ours,)):
                if isinstance(name, str) and name in known and name not in theirs:
                    names.append(name)
        return ", ".join(dict.fromkeys(names)) or "(none)"

    @staticmethod
    def _model_names() -> list[str]:
        from osteo_tf import models

        return models.names()

    @classmethod
    def field_names(cls) -> list[str]:
        """The settable fields (everything but ``profile``), in declaration order."""
        return [f.name for f in dataclasses.fields(cls) if f.name != "profile"]

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(f.name, getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)
        if self.profile not in PROFILE_NAMES:
            raise ValueError(f"profile must be one of {list(PROFILE_NAMES)}. {_received('profile', self.profile)}")
        choice(self, "preset", self.PRESETS)
        choice(self, "strategy", self.STRATEGIES)
        class_choice(self)
        self.check()

    def check(self) -> None:
        """The study's own rules (ranges, choices, model names); raise ``ValueError``."""

    # --------------------------------------------------------------------------------------
    def replace(self, **changes: Any):
        """A copy with ``changes`` applied (checked like a new instance)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able values (tuples become lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    def table(self) -> pd.DataFrame:
        """This run's settings beside the paper protocol's (the ``full`` profile), one row per
        field, ``differs`` marking every departure from it."""
        full = type(self).for_profile("full") if "full" in self.PROFILES else None
        rows = []
        for name in self.field_names():
            ours = _show(getattr(self, name))
            theirs = _show(getattr(full, name)) if full is not None else ""
            rows.append({"setting": name, "this run": ours, "paper protocol (full profile)": theirs,
                         "differs": full is not None and ours != theirs})
        if self.profile in self.WITH_WEIGHTS and (choice_text := self.model_choice()):
            rows.append({"setting": "model choice", "this run": choice_text, "paper protocol (full profile)": "",
                         "differs": False})
        return pd.DataFrame(rows)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value) if value else "(none)"
    return str(value)


# ------------------------------------------------------------------------------------------
# checks the studies' ``check`` methods share


def class_choice(settings: StudySettings, name: str = "classes") -> None:
    """Field ``name`` must hold class names or ``source=target`` merges, each name at most once.

    Raises:
        ValueError: naming the field, the entry at fault and the value received.
    """
    value = getattr(settings, name)
    seen: set[str] = set()
    for entry in value:
        parts = [p.strip() for p in entry.split("=")]
        if len(parts) > 2 or not all(parts):
            raise ValueError(f"{name} entries must be a class name or 'source=target' (e.g. osteopenia=osteoporosis); "
                             f"{entry!r} is neither. {_received(name, value)}")
        if parts[0] in seen:
            raise ValueError(f"{name} names class {parts[0]!r} twice. {_received(name, value)}")
        seen.add(parts[0])


def positive(settings: StudySettings, *names: str) -> None:
    """Each field of ``names`` must be a positive number.

    Raises:
        ValueError: naming the first field that is not.
    """
    for name in names:
        value = getattr(settings, name)
        if not value > 0:
            raise ValueError(f"{name} must be positive. {_received(name, value)}")


def at_least(settings: StudySettings, name: str, minimum: float, *, meaning: str = "") -> None:
    """Field ``name`` must be at least ``minimum`` (``meaning`` says what a boundary value means).

    Raises:
        ValueError: naming the field, the minimum and the value received.
    """
    value = getattr(settings, name)
    if not value >= minimum:
        extra = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name} must be at least {minimum}{extra}. {_received(name, value)}")


def choice(settings: StudySettings, name: str, allowed: Sequence[Any]) -> None:
    """Field ``name`` (or every element of a tuple field) must be one of ``allowed``.

    Raises:
        ValueError: naming the field, the allowed values and the value received.
    """
    value = getattr(settings, name)
    bad = [v for v in value if v not in allowed] if isinstance(value, tuple) else (
        [] if value in allowed else [value])
    if bad:
        raise ValueError(f"{name} must be one of {list(allowed)}. {_received(name, value)}")


def in_range(settings: StudySettings, name: str, low: float, high: float, *, closed: str = "neither") -> None:
    """Field ``name`` must lie between ``low`` and ``high`` (``closed``: neither, low, high, both).

    Raises:
        ValueError: naming the field, the interval and the value received.
    """
    value = getattr(settings, name)
    lo_ok = value >= low if closed in ("low", "both") else value > low
    hi_ok = value <= high if closed in ("high", "both") else value < high
    if not (lo_ok and hi_ok):
        left = "[" if closed in ("low", "both") else "("
        right = "]" if closed in ("high", "both") else ")"
        raise ValueError(f"{name} must be in {left}{low}, {high}{right}. {_received(name, value)}")


def model_names(settings: StudySettings, *names: str) -> None:
    """Every model named by the fields ``names`` (a name or a tuple of names) must be registered.

    Raises:
        ValueError: naming the field, the registered models and the value received.
    """
    from osteo_tf import models

    known = models.names()
    for name in names:
        choice(settings, name, known)


def not_empty(settings: StudySettings, *names: str) -> None:
    """Each tuple field of ``names`` must hold at least one value.

    Raises:
        ValueError: naming the first empty field.
    """
    for name in names:
        if not getattr(settings, name):
            raise ValueError(f"{name} must name at least one value. {_received(name, getattr(settings, name))}")
