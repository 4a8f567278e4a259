"""Font registry for watermark and scene text: DejaVu (matplotlib), Noto Sans CJK and the committed font pack.

Every face has a stable name (e.g. "dejavu-sans-bold", "noto-cjk-sc", "roboto-condensed") and the
scripts it can draw, so phrases are only drawn in faces that have their glyphs, and the style-held-out
split can keep some faces out of training by name. Faces whose file is missing are left out of the
registry (the generator still runs on what is installed); `available_faces()` says which.

The font pack (data/fonts, built by `wm corpus` from pinned Debian font packages: Latin sans, serif,
mono, condensed, script, handwritten and display faces, and CJK faces subset to the characters the
phrases need) lists each face's scripts in its manifest.jsonl. Those were measured from the face's
cmap at build time (`covered_scripts`: a face draws a script when it has a glyph for every character
the phrases of that script may hold, `script_characters`), not assumed.

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
import json
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ImageFont

from wmcore.data import phrases

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

# The committed font pack: where `wm corpus` writes it, read in place (no install step).
FONT_PACK_DIR = Path(__file__).resolve().parents[2] / "data" / "fonts"
PROBE_DRAWS = 4000  # phrase draws per maker: each word list is drawn hundreds of times over
PROBE_SEED = 0


def _font_pack_rows(folder: Path = FONT_PACK_DIR) -> list[dict]:
    path = folder / "manifest.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


FONT_LICENSES = {
    "dejavu": "DejaVu fonts (Bitstream Vera derivative, free license; shipped with matplotlib)",
    "noto-cjk": "Noto Sans CJK, SIL Open Font License 1.1 (noto-cjk-sans-otc package)",
    # data/fonts: one entry per face (licenses/<package>.copyright holds each package's full text)
    **{r["name"]: f"{r['license']} ({r['package']} {r['package_version']}, {r['path']}; "
       f"{'subset to ' + r['subset'] + ' by wm corpus' if r['subset'] != 'none' else 'unmodified'})"
       for r in _font_pack_rows()},
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
    """All installed faces, in a fixed order: DejaVu, Noto CJK, then the font pack in manifest order."""
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
    for row in _font_pack_rows():
        path = FONT_PACK_DIR / row["file"]
        if path.is_file() and row["scripts"]:
            faces.append(FontFace(row["name"], str(path), 0, frozenset(row["scripts"]), bool(row["bold"])))
    return tuple(faces)


@functools.lru_cache(maxsize=1)
def script_characters() -> dict[str, frozenset[str]]:
    """Per script, every character (whitespace aside) its phrases may hold: what a face must cover to draw it.

    Drawn from the phrase makers with a fixed seed, PROBE_DRAWS times each, so every word list and
    format comes up many times over; a date's 年月日 or a Japanese sign word lands in the script the
    phrase is drawn in ("sc"), exactly as the renderer picks its face.
    """
    rng = np.random.default_rng(PROBE_SEED)
    chars: dict[str, set[str]] = {s: set() for s in SCRIPTS}
    makers = [lambda: phrases.make_ai_label(rng), lambda: phrases.make_stamp_phrase(rng),
              lambda: phrases.make_block(rng, 3), lambda: phrases.make_scene_phrase(rng),
              *(lambda k=k: phrases.make_phrase(rng, k) for k in phrases.PHRASE_KINDS)]  # fmt: skip
    for make in makers:
        for _ in range(PROBE_DRAWS):
            phrase = make()
            chars[phrase.script].update(c for c in phrase.text if not c.isspace())
    return {s: frozenset(c) for s, c in chars.items()}


def covered_scripts(path: str | Path, index: int = 0) -> frozenset[str]:
    """The scripts face `index` of the font file can draw: those whose `script_characters` its cmap all holds."""
    from fontTools.ttLib import TTFont  # deferred: only the corpus build and tests measure coverage

    cmap = {chr(c) for c in TTFont(str(path), fontNumber=index, lazy=True).getBestCmap()}
    return frozenset(s for s, chars in script_characters().items() if chars <= cmap)


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
