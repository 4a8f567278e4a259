"""The corpus lock (data/corpus.yaml): the pinned registry packages `wm corpus` builds data/corpus and
data/fonts from, the files it takes from each and what they show.

A lock of pinned packages, not an experiment knob: it lives in its own file so params.yaml (and every
MLflow run's flat params) stays free of ~40 package hashes, and in its own module so the DVC `corpus`
stage (a 2.3 GB download) depends on this schema only, not on the params schema (wmcore/config.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from wmcore.schema import ConfigError, Group, format_error

CORPUS_DIR = Path(__file__).resolve().parents[2] / "data" / "corpus"
SPEC_PATH = CORPUS_DIR.parent / "corpus.yaml"
PAGE_CATEGORIES = ("document", "screenshot")  # corpus categories that are pages of text: "page" backgrounds
TEXT_CATEGORIES = (*PAGE_CATEGORIES, "scene_text")  # corpus categories with text of their own: never mirrored


CorpusSplit = Literal["train", "val", "test"]
CorpusCategory = Literal[
    "landscape", "nature", "water", "mountain", "sky", "animal", "people", "food", "product", "interior", "street",
    "facade", "monument", "artwork", "line_art", "texture", "scene_text", "screenshot", "document", "abstract",
]  # fmt: skip
FontStyle = Literal["sans", "serif", "mono", "condensed", "script", "handwritten", "display", "rounded", "slab"]
SHA256_PATTERN = r"^[0-9a-f]{64}$"
FACE_NAME_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"


class CorpusCrops(Group):
    """Views cut from each taken picture (a panorama strip, a texture atlas) instead of the whole picture."""

    aspect: float = Field(4 / 3, ge=0.25, le=4.0, description="Width / height of every view.")
    region: list[float] = Field(
        default_factory=lambda: [0.0, 0.0, 1.0, 1.0], min_length=4, max_length=4,
        description="[left, top, right, bottom] of the picture the views come from, as shares of its width and "
        "height (e.g. the band of a panorama below its transparent sky).",
    )  # fmt: skip
    views: int | None = Field(
        None, ge=1, le=200, description="Views spread evenly along the region's long side; null = as many as fit "
        "side by side without overlapping.",
    )  # fmt: skip
    max_overlap: float = Field(
        0.25, ge=0.0, le=0.5, description="Share of its long side a view may share with its neighbour (more "
        "`views` than fit overlap; beyond this they are one picture twice and the build refuses them).",
    )  # fmt: skip
    skip: list[int] = Field(
        default_factory=list, description="Views left out, counted from 0 along the region (text, a seam, a flat patch)."
    )

    @model_validator(mode="after")
    def _valid_region(self) -> CorpusCrops:
        left, top, right, bottom = self.region
        if not (0.0 <= left < right <= 1.0 and 0.0 <= top < bottom <= 1.0):
            raise ValueError(f"region {self.region}: needs 0 <= left < right <= 1 and 0 <= top < bottom <= 1")
        if any(i < 0 for i in self.skip) or len(set(self.skip)) != len(self.skip):
            raise ValueError(f"skip {self.skip}: view numbers are distinct and >= 0")
        if self.views is not None and any(i >= self.views for i in self.skip):
            raise ValueError(f"skip {self.skip}: only views 0..{self.views - 1} exist")
        return self


class CorpusTake(Group):
    globs: list[str] = Field(
        ..., min_length=1,
        description="Paths inside the package to take: `*` within a folder, `**` across folders; "
        "`bundle.rcc!inner/*.webp` reaches into a Qt resource bundle, `bundle.pk3!inner/*.png` into a zip (.pk3).",
    )  # fmt: skip
    exclude: list[str] = Field(default_factory=list, description="Paths the globs take that are left out.")
    every: int = Field(1, ge=1, le=1000, description="Take every n-th of the matching paths (sorted): thins big folders.")
    category: CorpusCategory = Field(..., description="What the pictures show (per-category counts, page backgrounds).")
    license: str | None = Field(
        None, description="License of these files; null = the package's machine-readable copyright file says it per file."
    )
    has_text: bool = Field(False, description="The pictures hold ordinary text of their own (never mirrored).")
    crops: CorpusCrops | None = Field(
        None, description="Cut each picture into views (each stored as a picture of its own); null = the whole picture."
    )


class CorpusPackage(Group):
    name: str = Field(..., min_length=1, description="Registry package name.")
    version: str = Field(..., min_length=1, description="Exact package version.")
    kind: Literal["deb", "sdist"] = Field("deb", description="Debian binary package or Python source tarball.")
    urls: list[str] = Field(..., min_length=1, description="Where to fetch it, tried in order (same file, same sha256).")
    sha256: str = Field(..., pattern=SHA256_PATTERN, description="sha256 of the package file.")
    split: CorpusSplit | None = Field(
        None, description="The one corpus split all its pictures go to (a package never feeds two splits); "
        "null for a package that only lends its copyright file.",
    )  # fmt: skip
    copyright: str | None = Field(
        None, description="Path of the copyright file inside; null = usr/share/doc/<name>/copyright (deb)."
    )
    copyright_from: str | None = Field(
        None, description="Another package of the spec whose copyright file covers this one (a symlinked doc folder)."
    )
    take: list[CorpusTake] = Field(default_factory=list, description="The files taken and what they are.")

    @model_validator(mode="after")
    def _needs_split(self) -> CorpusPackage:
        if self.take and self.split is None:
            raise ValueError(f"package {self.name} takes files, so it needs a split (train, val or test)")
        return self


class CorpusImages(Group):
    long_side: int = Field(768, ge=128, le=4096, description="Stored pictures are downscaled to this long side, px.")
    min_side: int = Field(200, ge=16, le=4096, description="Source pictures with a shorter side are skipped, px.")
    webp_quality: int = Field(70, ge=1, le=100, description="WebP quality of the stored pictures.")
    dedup_bits: int = Field(
        24, ge=0, le=256, description="Pictures whose 256-bit difference hashes differ in at most this many bits "
        "are one picture (the same wallpaper in several sizes): the first kept, test before val before train.",
    )  # fmt: skip
    max_mib: float = Field(32.0, gt=0.0, description="The built corpus folder must stay under this size, MiB.")


class FontFaceSpec(Group):
    name: str = Field(..., pattern=FACE_NAME_PATTERN, description="Stable face name (the held-out split uses it).")
    file: str = Field(..., min_length=1, description="Path of the .ttf/.otf/.ttc inside the package.")
    index: int = Field(0, ge=0, le=64, description="Face index inside a .ttc collection.")
    bold: bool = Field(False, description="A bold face (offered when a style asks for bold).")
    style: FontStyle = Field(..., description="What kind of typeface it is (counts in the build summary).")
    subset: Literal["latin", "cjk", "none"] = Field(
        ..., description="Characters kept: latin ranges, latin + the CJK text, or the file unchanged "
        "(required for fonts with a Reserved Font Name: a subset is a modified version).",
    )  # fmt: skip


class FontPackage(Group):
    name: str = Field(..., min_length=1, description="Registry package name.")
    version: str = Field(..., min_length=1, description="Exact package version.")
    urls: list[str] = Field(..., min_length=1, description="Where to fetch it, tried in order.")
    sha256: str = Field(..., pattern=SHA256_PATTERN, description="sha256 of the package file.")
    license: str = Field(..., min_length=1, description="License of the fonts, as its copyright file states it.")
    faces: list[FontFaceSpec] = Field(..., min_length=1, description="The faces taken.")


class FontBuild(Group):
    latin_ranges: list[str] = Field(
        ..., min_length=1, description="Unicode ranges every subset keeps, e.g. U+0020-007E."
    )
    cjk_text: str = Field(..., min_length=1, description="Characters CJK subsets keep besides the phrases' own.")
    cjk_ranges: list[str] = Field(default_factory=list, description="Unicode ranges CJK subsets keep (kana, punctuation).")
    max_mib: float = Field(8.0, gt=0.0, description="The built fonts folder must stay under this size, MiB.")


class CorpusSpec(Group):
    images: CorpusImages = Field(default_factory=CorpusImages)
    packages: list[CorpusPackage] = Field(..., min_length=1)
    fonts: FontBuild
    font_packages: list[FontPackage] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> CorpusSpec:
        names = [p.name for p in self.packages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"packages listed twice: {dupes}")
        for p in self.packages:
            if p.copyright_from is not None and p.copyright_from not in names:
                raise ValueError(f"package {p.name}: copyright_from {p.copyright_from!r} is not a package of the spec")
        faces = [f.name for fp in self.font_packages for f in fp.faces]
        dupes = sorted({n for n in faces if faces.count(n) > 1})
        if dupes:
            raise ValueError(f"font faces named twice: {dupes}")
        return self


def load_corpus_spec(path: str | Path) -> CorpusSpec:
    """The validated corpus spec (data/corpus.yaml: pinned packages, files taken, fonts); ConfigError names the key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: corpus spec not found")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return CorpusSpec.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_error(err, str(path), CorpusSpec)) from None
