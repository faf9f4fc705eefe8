"""The study registry: notebooks, synthetic defaults and the papers' reference numbers.

Numbers are copied from the papers' text and tables; where a paper contradicts itself the
note says so. Each report puts these beside ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from osteo_tf.config import PROJECT_ROOT

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"


@dataclass(frozen=True)
class Study:
    """One reproducible study.

    Attributes:
        name: notebook stem, e.g. "01-calcaneus-augmentation".
        title: one line for the index.
        citation: the source paper.
        synthetic_mode: default synthetic data mode ("calcaneus", "knee", "dxa") or None.
        classes: number of classes of the default experiment.
        paper: reference results, one dict per (experiment, model).
        headline: (experiment, model) pairs shown in reports/index.html.
        primary: the one clean-protocol (experiment, model) result the quality bar applies to
            (``osteo_tf.reports.quality_bar``): the paper's headline comparison's best arm.
        workflow: the module of ``osteo_tf.workflows`` the notebook calls (its ``Settings``
            fields are the notebook's parameters), e.g. "study01".
    """

    name: str
    title: str
    citation: str
    synthetic_mode: str | None
    classes: int
    paper: list[dict] = field(default_factory=list)
    headline: tuple = ()
    workflow: str = ""
    primary: tuple = ()

    @property
    def notebook(self):
        """Path of the study notebook."""
        return NOTEBOOK_DIR / f"{self.name}.ipynb"


def _acc_sp_sn(exp: str, model: str, acc: float, sp: float | None = None, sn: float | None = None) -> dict:
    row = {"experiment": exp, "model": model, "accuracy": acc / 100}
    if sp is not None:
        row["specificity"] = sp / 100
    if sn is not None:
        row["sensitivity"] = sn / 100
    return row


_S01 = []
for _exp, _rows in {
    "E1": {"alexnet": (50, 35.2, 64.7), "googlenet": (52.9, 58.8, 47), "resnet50": (58.8, 52.9, 64.7),
           "mobilenetv2": (58.6, 64.7, 52.9), "inceptionv3": (47, 64.7, 29.4)},
    "E2": {"alexnet": (81.4, 88.5, 74.2), "googlenet": (80, 81.4, 78.5), "resnet50": (80, 80, 80),
           "mobilenetv2": (77.8, 84.2, 71.4), "inceptionv3": (82.1, 82.8, 81.4)},
    "E3": {"alexnet": (95.3, 93.5, 97.1), "googlenet": (98.5, 100, 97.1), "resnet50": (96, 96.4, 95.6),
           "mobilenetv2": (94.9, 92.1, 97.8), "inceptionv3": (97.4, 99.2, 95.6)},
    "E4": {"alexnet": (98.4, 100, 96.8), "googlenet": (97.1, 96.1, 98), "resnet50": (99.02, 98, 100),
           "mobilenetv2": (98, 97.4, 98.7), "inceptionv3": (98.4, 96.8, 100)},
}.items():
    for _m, (_a, _sp, _sn) in _rows.items():
        _S01.append(_acc_sp_sn(_exp, _m, _a, _sp, _sn))
_S01 += [_acc_sp_sn("E7", m, a) for m, a in
         {"alexnet": 99.4, "googlenet": 100, "resnet50": 97.6, "mobilenetv2": 91.8, "inceptionv3": 94.4}.items()]
_S01 += [_acc_sp_sn("E5", "study01_cnn", 96.1, 95.5, 96.8), _acc_sp_sn("E7", "study01_cnn", 91.7),
         _acc_sp_sn("E6", "majority_vote", 99.02)]

_S03 = []
for _m, (_a, _b) in {"alexnet": (92.3, 89.8), "vgg16": (89.1, 88.1), "resnet50": (90.2, 89.8),
                     "xception": (90.2, 86.4), "study03_multibranch": (94.5, 91.5),
                     "study03_multibranch+pretrain": (98.91, 96.61)}.items():
    _S03.append(_acc_sp_sn("A (2 classes)", _m, _a))
    _S03.append(_acc_sp_sn("B (3 classes)", _m, _b))

_S04 = []
for _ap, _m, _tp, _fp, _tn, _fn, _acc, _sn, _sp, _f1, _auc, _s in [
    (1, "resnet18", 30, 9, 130, 12, .884, .714, .935, .741, .816, 83.69),
    (1, "alexnet", 31, 14, 125, 11, .862, .738, .899, .713, .815, 60.49),
    (1, "vgg16", 29, 17, 122, 13, .834, .690, .878, .659, .784, 400.03),
    (1, "densenet121", 30, 13, 126, 12, .862, .714, .906, .706, .810, 220.43),
    (1, "squeezenet", 33, 12, 127, 9, .884, .786, .914, .759, .828, 86.18),
    (2, "resnet18", 22, 10, 129, 20, .834, .524, .928, .594, .726, 39.25),
    (2, "alexnet", 25, 14, 125, 17, .829, .595, .899, .617, .747, 28.14),
    (2, "vgg16", 19, 6, 133, 23, .840, .452, .957, .567, .705, 148.2),
    (2, "densenet121", 25, 9, 130, 17, .856, .595, .935, .658, .765, 93.59),
    (2, "squeezenet", 21, 2, 137, 21, .873, .500, .986, .646, .743, 44.73),
    (3, "study04_model1", 28, 6, 133, 14, .889, .667, .957, .737, .934, 41.00),
    (3, "study04_model2", 29, 14, 125, 13, .850, .690, .899, .682, .888, 44.62),
    (3, "study04_model3", 23, 7, 132, 19, .856, .548, .950, .639, .828, 36.80),
    (3, "study04_model4", 31, 10, 129, 11, .884, .738, .928, .747, .936, 55.61),
]:
    _S04.append({"experiment": f"approach{_ap}", "model": _m, "tp": _tp, "fp": _fp, "tn": _tn, "fn": _fn,
                 "accuracy": _acc, "sensitivity": _sn, "specificity": _sp, "f1": _f1, "auc": _auc,
                 "seconds_per_10_epochs": _s})

_S05 = [
    {"experiment": "original", "model": "mobilenetv3", "accuracy": 0.77, "precision": 0.7083, "sensitivity": 0.9189, "f1": 0.8000},
    {"experiment": "original", "model": "efficientnetb0", "accuracy": 0.77, "precision": 0.7632, "sensitivity": 0.7838, "f1": 0.7733},
    {"experiment": "lime-masked", "model": "mobilenetv3", "accuracy": 0.8648, "precision": 0.9354, "sensitivity": 0.7837, "f1": 0.8529},
    {"experiment": "lime-masked", "model": "efficientnetb0", "accuracy": 0.9189, "precision": 0.9444, "sensitivity": 0.9189, "f1": 0.9315},
]

STUDIES: dict[str, Study] = {s.name: s for s in [
    Study("00-dataset-card",
          "Dataset card: counts per class / patient / split, sizes, bit depths, duplicates, near-duplicates, quarantine, baselines",
          "No paper: describes the data every study uses", "calcaneus", 2, [], workflow="dataset_card"),
    Study("01-calcaneus-augmentation",
          "Calcaneus radiographs: offline augmentation sets N/A/B/C, five transfer models, small CNN, majority vote",
          "Study 01 (calcaneus radiographs, offline augmentation, transfer learning): calcaneus ROIs, 87 OP / 87 CN, 400x400", "calcaneus", 2, _S01,
          (("E4", "resnet50"), ("E6", "majority_vote")), workflow="study01", primary=("E4", "resnet50")),
    Study("02-bm3d-resnet50",
          "Hip/spine X-rays: BM3D denoising + fine-tuned ResNet50, three classes",
          "Study 02 (Kaur, Vivekanandam and Whig, Automated Osteoporosis Classification Using Deep Learning on X-Ray Images): 1200 healthy / 950 osteopenia / 870 osteoporosis", "knee", 3,
          [{"experiment": "bm3d", "model": "resnet50", "accuracy": 0.902,
            "per_class": {"normal": [0.924, 0.941, 0.932], "osteopenia": [0.887, 0.863, 0.875],
                          "osteoporosis": [0.901, 0.895, 0.898]},
            "psnr_noisy": 21.3, "psnr_denoised": 31.7, "ssim_noisy": 0.65, "ssim_denoised": 0.91}],
          (("bm3d", "resnet50"),), workflow="study02", primary=("bm3d", "resnet50")),
    Study("03-knee-same-domain-transfer",
          "Knee radiographs: ROI + smudging, own multi-branch CNN, same-domain self-supervised pretraining",
          "Study 03 (Diagnosis of Osteoporosis Using Transfer Learning in the Same Domain): dataset A 186+186 images, dataset B 3 classes", "knee", 2, _S03,
          (("A (2 classes)", "study03_multibranch+pretrain"),), workflow="study03",
          primary=("A (2 classes)", "study03_multibranch+pretrain")),
    Study("04-dxa-tbs",
          "Spine DXA: bone quality by TBS range, transfer (all layers / head only) and small tuned CNNs",
          "Study 04 (Gonzalez et al., Bone Quality Classification of DXA Images using CNN Models): 1469 lumbar DXA images, TBS labels, test 139/42", "dxa", 2, _S04,
          (("approach1", "resnet18"), ("approach3", "study04_model1")), workflow="study04",
          primary=("approach3", "study04_model1")),
    Study("05-knee-explanations",
          "Knee X-rays: EfficientNetB0 / MobileNetV3, LIME and Grad-CAM, LIME-masked retraining",
          "Study 05 (Hosain, Feature-Driven Deep Learning for Osteoporosis Detection): 774 knee X-rays, split 7:2:1", "knee", 2, _S05,
          (("original", "efficientnetb0"), ("lime-masked", "efficientnetb0")), workflow="study05",
          primary=("original", "efficientnetb0")),
    Study("06-leakage-audit",
          "Leakage audit: augment-then-split, image-level splits, test-set reuse, LIME masks from a model that saw the test",
          "Audit of studies 01 and 05's protocols (Yagis et al. 2021; Kapoor and Narayanan 2023)", "calcaneus", 2, [],
          workflow="leakage_audit"),
]}


def get_study(name: str) -> Study:
    """Look a study up by full name or by its number prefix ("01", "1")."""
    if name in STUDIES:
        return STUDIES[name]
    matches = [s for s in STUDIES.values() if s.name.split("-")[0].lstrip("0") == str(name).lstrip("0")]
    if len(matches) == 1:
        return matches[0]
    raise ValueError(f"unknown study {name!r}. Known: {list(STUDIES)}")


def study_names() -> list[str]:
    """Every registered study whose notebook exists, in order."""
    return [n for n, s in STUDIES.items() if s.notebook.exists()] or list(STUDIES)
