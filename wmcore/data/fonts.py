"""Font registry for watermark and scene text: the DejaVu family matplotlib ships and Noto Sans CJK.

Every face has a stable name (e.g. "dejavu-sans-bold", "noto-cjk-sc") and the scripts it can
draw, so phrases are only drawn in faces that have their glyphs, and the style-held-out split can
keep some faces out of training by name. Faces whose file is missing are left out of the registry
(the generator still runs on what is installed); `available_faces()` says which.

`face_scope(held_out, prefer_held_out)` is how the generator applies a held-out choice to ALL text of
a sample: watermarks (render.py) and also scene text and document pages (compose.py, procedural.py),
which pick faces through `faces_for` deep inside helpers that have no context argument. Inside the
scope `faces_for` filters by it, and `load_font` records every face drawn (the manifest lists them).
The scope is a ContextVar, so it is per thread / task and reset on exit; outside any scope nothing
is filtered or recorded.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
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


@dataclass
class FaceScope:
    """The held-out rule of one sample and the names of the faces drawn under it."""

    held_out: frozenset[str]
    prefer_held_out: bool  # False: never offer held-out faces; True: offer only them, per script, where any exist
    used: set[str] = field(default_factory=set)

    def allowed(self, faces: list[FontFace]) -> list[FontFace]:
        """The faces of one script this scope offers (may be empty for a script no seen face covers)."""
        if self.prefer_held_out:
            return [f for f in faces if f.name in self.held_out] or faces
        return [f for f in faces if f.name not in self.held_out]


_SCOPE: ContextVar[FaceScope | None] = ContextVar("wmdetect_face_scope", default=None)


@contextlib.contextmanager
def face_scope(held_out: frozenset[str] = frozenset(), prefer_held_out: bool = False) -> Iterator[set[str]]:
    """Within the block `faces_for` applies the held-out rule and drawn face names collect in the yielded set."""
    scope = FaceScope(frozenset(held_out), prefer_held_out)
    token = _SCOPE.set(scope)
    try:
        yield scope.used
    finally:
        _SCOPE.reset(token)


def faces_for(script: str, bold_only: bool = False) -> list[FontFace]:
    """Faces able to draw `script` (within the active `face_scope`); bold ones only if `bold_only` and any exist."""
    faces = [f for f in available_faces() if script in f.scripts]
    scope = _SCOPE.get()
    if scope is not None:
        faces = scope.allowed(faces)
    if bold_only and any(f.bold for f in faces):
        faces = [f for f in faces if f.bold]
    return faces


def load_font(face: FontFace, size: int) -> ImageFont.FreeTypeFont:
    """The face at `size` px (em size), cached per process; recorded in the active `face_scope`."""
    scope = _SCOPE.get()
    if scope is not None:
        scope.used.add(face.name)
    return _cached_font(face, max(4, int(size)))


@functools.lru_cache(maxsize=512)
def _cached_font(face: FontFace, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(face.path, size, index=face.index)
