"""Where every data set of the paper and its published foreground masks come from."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..layouts.classes import KNOWN_CLASSES
from ..records import DatasetError


@dataclass(frozen=True)
class Archive:
    """One downloadable file: a URL (or ``gdrive:ID`` / a Drive link) and how to check it."""

    url: str
    filename: str
    checksum: str | None = None  # hex digest: 64 characters = sha256, 32 = md5
    format: str = "auto"  # "zip", "tar", "tar.gz", "tar.xz" or "auto" (sniffed)


@dataclass(frozen=True)
class DatasetSource:
    """Where a data set and its published foreground masks come from, and how it looks."""

    name: str
    dirname: str
    classes: tuple[str, ...]
    required: tuple[str, ...]  # paths relative to the data set root; "{cls}" expands per class
    archives: tuple[Archive, ...] = ()
    foreground: tuple[Archive, ...] = ()
    foreground_dir: str = "{cls}/train/foreground_mask"
    # "search": find each class's mask folder anywhere in the archive; "class_folders": the
    # authors' zips, one top-level folder per class, each moved whole to ``foreground_dir``
    # (a folder that is no class of the data set is refused).
    foreground_layout: str = "search"
    license: str = ""
    manual: str = ""  # non-empty: no public direct archive, these are the instructions
    homepage: str = ""
    foreground_page: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def expected_paths(self) -> list[str]:
        """Relative paths the layout check requires, expanded over the class list."""
        out: list[str] = []
        for template in self.required:
            if "{cls}" in template:
                out += [template.format(cls=c) for c in self.classes]
            else:
                out.append(template)
        return out


_MVTEC_LIKE = ("{cls}/train/good", "{cls}/test/good")


def _drive_folder(folder_id: str) -> str:
    return f"https://drive.google.com/drive/folders/{folder_id}"


def _manual_text(name: str, where: str, layout: str) -> str:
    return (
        f"{name} has no public direct-download archive. {where} Then either arrange it as "
        f"{layout} under the data set root yourself, or pack that tree into a zip/tar and run "
        f"`patchguard data download --dataset {name.lower()} --archive PATH`."
    )


#: Every data set of the paper: public archives, published foreground masks and layout.
DATASETS: dict[str, DatasetSource] = {
    "mvtec": DatasetSource(
        name="mvtec",
        dirname="mvtec",
        classes=tuple(KNOWN_CLASSES["mvtec"]),
        required=(*_MVTEC_LIKE, "{cls}/ground_truth"),
        archives=(
            Archive(
                "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
                "420938113-1629952094/mvtec_anomaly_detection.tar.xz",
                "mvtec_anomaly_detection.tar.xz",
                "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
                "tar.xz",
            ),
        ),
        # The file id of the authors' download_data.py (their README links the folder
        # 1VHYcJUDja7o2xbYlh7YKYK_6EleizdoU); no digest is published.
        foreground=(Archive("gdrive:18Ml7zpIw47wWhlV9OLYl3pWPeQTK1QiI", "MVTec_FG.zip"),),
        foreground_layout="class_folders",
        license="CC BY-NC-SA 4.0 (non-commercial use only), MVTec Software GmbH.",
        homepage="https://www.mvtec.com/company/research/datasets/mvtec-ad/",
    ),
    "visa": DatasetSource(
        name="visa",
        dirname="visa",
        classes=tuple(KNOWN_CLASSES["visa"]),
        required=(
            "{cls}/Data/Images/Normal",
            "{cls}/Data/Images/Anomaly",
            "{cls}/Data/Masks/Anomaly",
            "split_csv/1cls.csv",
        ),
        archives=(
            Archive(
                "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
                "VisA_20220922.tar",
                "ef908989b6dc701fc218f643c127a4de",
                "tar",
            ),
        ),
        # The file id of the authors' download_data.py (folder 1IdLOXyMpi8dzhyeUV6cLOeW5LK4rIOfC).
        foreground=(Archive("gdrive:1c4oLDSiuhmejGspI17TtgaggLSlNL-Pi", "VisA_FG.zip"),),
        foreground_dir="{cls}/Data/Images/foreground_mask",
        foreground_layout="class_folders",
        license="CC BY 4.0, Amazon (registry.opendata.aws/visa).",
        homepage="https://github.com/amazon-science/spot-diff",
    ),
    "mpdd": DatasetSource(
        name="mpdd",
        dirname="mpdd",
        classes=tuple(KNOWN_CLASSES["mpdd"]),
        required=(*_MVTEC_LIKE, "{cls}/ground_truth"),
        foreground=(Archive(_drive_folder("10JHKrilH8lBwqnM5HRfkt_LytankNJ_S"), "mpdd_fg.zip"),),
        license="See https://github.com/stepanje/MPDD (academic use; cite the ICUMT 2021 paper).",
        manual=_manual_text(
            "MPDD",
            "It is shared as a SharePoint folder linked from https://github.com/stepanje/MPDD "
            "(open the 'Download link' there and download the whole folder as a zip).",
            "<root>/mpdd/<class>/{train/good, test/<defect>, ground_truth/<defect>}",
        ),
        homepage="https://github.com/stepanje/MPDD",
    ),
    "btad": DatasetSource(
        name="btad",
        dirname="btad",
        classes=("01", "02", "03"),
        required=("{cls}/train/ok", "{cls}/test/ok", "{cls}/test/ko", "{cls}/ground_truth/ko"),
        archives=(
            Archive(
                "https://avires.dimi.uniud.it/papers/btad/btad.zip",
                "btad.zip",
                "461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
                "zip",
            ),
        ),
        foreground=(Archive(_drive_folder("1LGtlVeFbgcC31cQeJnTWX-j2cTpLdsuf"), "btad_fg.zip"),),
        license="CC BY-SA 4.0 (BTAD / beanTech), see the VT-ADL repository.",
        homepage="https://github.com/pankajmishra000/VT-ADL",
    ),
    "dtd": DatasetSource(
        name="dtd",
        dirname="dtd",
        classes=tuple(KNOWN_CLASSES["dtd"]),
        required=(*_MVTEC_LIKE, "{cls}/ground_truth"),
        license="Research use; DTD-Synthetic (Aota et al., WACV 2023) built on DTD.",
        manual=_manual_text(
            "DTD-Synthetic",
            "It is shared as a Google Drive folder ("
            + _drive_folder("10OyPzvI3H6llCZBxKxFlKWt1Pw1tkMK1")
            + "); open it and use 'Download' to get it as a zip.",
            "<root>/dtd/<class>/{train/good, test/<defect>, ground_truth/<defect>}",
        ),
        homepage="https://openaccess.thecvf.com/content/WACV2023/html/Aota_Zero-Shot_Versus_"
        "Many-Shot_Unsupervised_Texture_Anomaly_Detection_WACV_2023_paper.html",
        extra={"note": "Texture data set: the whole image is foreground, no masks published."},
    ),
    "wfdd": DatasetSource(
        name="wfdd",
        dirname="wfdd",
        classes=tuple(KNOWN_CLASSES["wfdd"]),
        required=(*_MVTEC_LIKE, "{cls}/ground_truth"),
        archives=(
            Archive(
                "https://drive.google.com/file/d/1P8yfNnfoFsb0Lv-HRzkPQ2nD9qsL--Vk/view",
                "WFDD.zip",
            ),
        ),
        license="MIT (GLASS repository, cqylunlun/GLASS).",
        homepage="https://github.com/cqylunlun/GLASS#dataset-release",
        extra={"note": "Texture data set: the whole image is foreground, no masks published."},
    ),
    "brats2021": DatasetSource(
        name="brats2021",
        dirname="brats2021",
        classes=(),
        required=("train/normal", "test", "ground_truth"),
        foreground=(
            Archive(
                "https://drive.google.com/file/d/1viMafEbTR2HvMmWWxsrqd7yE9N3VR7FU/view",
                "brats2021_fg.zip",
            ),
        ),
        foreground_dir="train/foreground_mask",
        license="BraTS 2021 data use agreement (Synapse / RSNA-ASNR-MICCAI); registration needed.",
        manual=_manual_text(
            "BraTS2021",
            "Register and download it from http://braintumorsegmentation.org/ (Synapse) or the "
            "Kaggle mirror (login needed), then cut the 3D volumes into 2D slices.",
            "<root>/brats2021/{train/normal, test/<type>, ground_truth/<name with flair->seg>}",
        ),
        homepage="http://braintumorsegmentation.org/",
    ),
    "headct": DatasetSource(
        name="headct",
        dirname="headct",
        classes=(),
        required=("train/good", "test/good"),
        foreground=(
            Archive(
                "https://drive.google.com/file/d/1XdUgdMYrfAFydROTWRdj5S14UQbnu725/view",
                "headct_fg.zip",
            ),
        ),
        foreground_dir="train/foreground_mask",
        license="See the Kaggle page (felipekitamura/head-ct-hemorrhage).",
        manual=_manual_text(
            "HeadCT",
            "Download it from https://www.kaggle.com/datasets/felipekitamura/head-ct-hemorrhage "
            "(Kaggle needs a login) and split it into normal training and test images.",
            "<root>/headct/{train/good, test/good, test/<type>}",
        ),
        homepage="https://www.kaggle.com/datasets/felipekitamura/head-ct-hemorrhage",
    ),
}



def get_source(name: str) -> DatasetSource:
    """The source of a data set by name (aliases such as ``mvtec-ad`` and ``brats`` accepted)."""
    key = name.lower().replace("-", "").replace("_", "")
    aliases = {"mvtecad": "mvtec", "dtdsynthetic": "dtd", "brats": "brats2021"}
    key = aliases.get(key, key)
    if key not in DATASETS:
        raise DatasetError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[key]
