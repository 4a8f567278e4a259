"""Font registry for watermark and scene text: the DejaVu family matplotlib ships and Noto Sans CJK.

Every face has a stable name (e.g. "dejavu-sans-bold", "noto-cjk-sc") and the scripts it can
draw, so phrases are only drawn in faces that have their glyphs, and a later "style-held-out"
split can keep some faces out of training by name. Faces whose file is missing are left out of
the registry (the generator still runs on what is installed); `available_faces()` says which.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from PIL import ImageFont

# Scripts a phrase may need. "latin" covers ASCII plus ©, ®, accents; the CJK ones need Noto.
SCRIPTS = ("latin", "sc", "tc", "jp", "kr")


@dataclass(frozen=True)
class FontFace:
    """One typeface: `path` to a .ttf/.ttc, `index` of the face inside a collection."""

    name: str
    path: str
    index: int
    scripts: frozenset[str]
    bold: bool = False


# (name, file under matplotlib's fonts/ttf, bold)
_DEJAVU = (
    ("dejavu-sans", "DejaVuSans.ttf", False),
    ("dejavu-sans-bold", "DejaVuSans-Bold.ttf", True),
    ("dejavu-sans-oblique", "DejaVuSans-Oblique.ttf", False),
    ("dejavu-sans-boldoblique", "DejaVuSans-BoldOblique.ttf", True),
    ("dejavu-serif", "DejaVuSerif.ttf", False),
    ("dejavu-serif-bold", "DejaVuSerif-Bold.ttf", True),
    ("dejavu-serif-italic", "DejaVuSerif-Italic.ttf", False),
    ("dejavu-mono", "DejaVuSansMono.ttf", False),
    ("dejavu-mono-bold", "DejaVuSansMono-Bold.ttf", True),
)
# Face indices inside NotoSansCJK-Regular.ttc (checked with ImageFont.getname()).
_NOTO = (("noto-cjk-jp", 0, "jp"), ("noto-cjk-kr", 1, "kr"), ("noto-cjk-sc", 2, "sc"), ("noto-cjk-tc", 3, "tc"))

FONT_LICENSES = {
    "dejavu": "DejaVu fonts (Bitstream Vera derivative, free license; shipped with matplotlib)",
    "noto-cjk": "Noto Sans CJK, SIL Open Font License 1.1 (noto-cjk-sans-otc package)",
}


def _matplotlib_font_dir() -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _noto_path() -> Path | None:
    try:
        import noto_cjk_sans_otc
    except ImportError:
        return None
    return Path(str(noto_cjk_sans_otc.FONT_PATH))


@functools.lru_cache(maxsize=1)
def available_faces() -> tuple[FontFace, ...]:
    """All installed faces, in a fixed order (the order never depends on the file system)."""
    faces: list[FontFace] = []
    mpl_dir = _matplotlib_font_dir()
    if mpl_dir is not None:
        for name, file, bold in _DEJAVU:
            if (mpl_dir / file).is_file():
                faces.append(FontFace(name, str(mpl_dir / file), 0, frozenset({"latin"}), bold))
    noto = _noto_path()
    if noto is not None and noto.is_file():
        for name, index, script in _NOTO:
            # Noto CJK also carries Latin glyphs, so it can draw mixed "XX AI生成" phrases.
            faces.append(FontFace(name, str(noto), index, frozenset({"latin", script})))
    return tuple(faces)


def faces_for(script: str, bold_only: bool = False) -> list[FontFace]:
    """Faces able to draw `script`; bold ones only if `bold_only` and any exist."""
    faces = [f for f in available_faces() if script in f.scripts]
    if bold_only and any(f.bold for f in faces):
        faces = [f for f in faces if f.bold]
    return faces


@functools.lru_cache(maxsize=512)
def load_font(face: FontFace, size: int) -> ImageFont.FreeTypeFont:
    """The face at `size` px (em size), cached per process."""
    return ImageFont.truetype(face.path, max(4, int(size)), index=face.index)
