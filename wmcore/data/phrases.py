"""Watermark and scene-text phrases: a registry of phrase kinds, each drawing a random phrase.

A phrase kind (brand, copyright, url, stock word, CJK notice, AI label, ...) has a stable name and
a script ("latin", "sc", "tc", "jp", "kr": see `fonts.SCRIPTS`), so the renderer picks a face that
has the glyphs and the style-held-out split can keep kinds of `PHRASE_KINDS` out of training by name
(a `PhrasePolicy`). Phrases are drawn from word lists with the caller's numpy Generator, so they are
deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

_BRANDS = (
    "Lumina Stock", "PixelVault", "Northlight", "ShutterMint", "Fotoria", "Clearframe", "Snapwell",
    "BrightLens", "Aperture Co.", "StockNest", "Imagery Hub", "Vista Photo", "Studio Nord", "Kestrel Media",
    "OpenFrame", "Mosaic Images", "Polar Pixel", "Fernweh Photo", "Atelier 9", "BluePeak", "DEPOSIT PIX",
)
_NAMES = (
    "Anna Keller", "J. Moreau", "Kenji Sato", "Maria Rossi", "L. Nguyen", "Sam O'Neil", "Priya Raman",
    "Tomás Ortega", "Ewa Nowak", "Li Wei", "Oskar Berg", "Chloé Martin", "Ivan Petrov", "Amara Okafor",
)
_SLUGS = ("lumina", "pixelvault", "northlight", "fotoria", "snapwell", "stocknest", "kestrel", "bluepeak", "mosaic")
_TLDS = (".com", ".net", ".io", ".photo", ".cn", ".de", ".co.uk")
_STOCK_WORDS = (
    "SAMPLE", "PREVIEW", "WATERMARK", "PROOF", "DRAFT", "COPY", "DEMO", "NOT FOR SALE", "FOR REVIEW ONLY",
    "COMP", "UNLICENSED", "Preview only", "sample",
)
_STAMP_WORDS = (
    "CONFIDENTIAL", "DO NOT COPY", "TOP SECRET", "APPROVED", "VOID", "COPY", "DRAFT", "PAID", "RECEIVED",
    "INTERNAL USE ONLY", "CANCELLED", "SPECIMEN",
)
_SC_FIXED = ("版权所有", "样张", "AI生成", "请勿转载", "仅供预览", "禁止商用", "水印", "内部资料", "机密", "样片", "翻版必究")
_SC_BRANDS = ("星辰图库", "光影摄影", "云图网", "千图工作室", "墨影工作室", "晨曦影像", "北岸视觉")
_SC_NAMES = ("张伟", "王芳", "李娜", "刘洋", "陈静")
_TC_FIXED = ("版權所有", "樣張", "請勿轉載", "僅供參考", "翻印必究", "機密")
_JP_FIXED = ("サンプル", "見本", "無断転載禁止", "転載禁止", "社外秘", "写真館", "プレビュー")
_KR_FIXED = ("샘플", "무단 복제 금지", "견본", "미리보기")
_AI_MAKERS = ("豆包", "即梦", "通义", "文心", "可灵", "混元", "星火", "百度", "元宝", "天工", "Doubao", "Vivid", "Muse",
              "LibLib", "Kling")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SCENE_WORDS = (
    "EXIT", "OPEN", "CAFÉ", "PARKING", "SALE", "Main St.", "PHARMACY", "NO ENTRY", "Bakery", "HOTEL",
    "出口", "营业中", "停车场", "便利店", "入口", "営業中", "駐車場", "$4.99", "€12,50", "Platform 3", "BUS STOP",
)


@dataclass(frozen=True)
class Phrase:
    """A phrase to draw: its text (may contain newlines), the script it needs, the kind that made it.

    `part_kinds`: for a multi-line block, the kinds of its lines (its own kind is "block").
    """

    text: str
    script: str
    kind: str
    part_kinds: tuple[str, ...] = ()

    def kinds(self) -> list[str]:
        """The kind and the kinds of its parts, e.g. ["block", "url", "copyright"]."""
        return [self.kind, *self.part_kinds]


def _pick(rng: np.random.Generator, items: tuple[str, ...]) -> str:
    return items[int(rng.integers(len(items)))]


def _year(rng: np.random.Generator) -> int:
    return int(rng.integers(2008, 2031))


def _date(rng: np.random.Generator) -> str:
    y, m, d = _year(rng), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    formats = (
        f"{y}-{m:02d}-{d:02d}", f"{d:02d}.{m:02d}.{y}", f"{_MONTHS[m - 1]} {d}, {y}", f"{y}/{m:02d}/{d:02d}",
        f"{y}-{m:02d}-{d:02d} {int(rng.integers(24)):02d}:{int(rng.integers(60)):02d}", f"{y}年{m}月{d}日",
    )
    return _pick(rng, formats)


def _copyright(rng: np.random.Generator) -> str:
    who = _pick(rng, _NAMES + _BRANDS)
    forms = (f"© {_year(rng)} {who}", f"Copyright © {who}", f"© {who}", f"(c) {_year(rng)} {who}", f"{who} ©")
    return _pick(rng, forms)


def _url(rng: np.random.Generator) -> str:
    slug = _pick(rng, _SLUGS)
    return _pick(rng, (f"www.{slug}{_pick(rng, _TLDS)}", f"{slug}{_pick(rng, _TLDS)}", f"https://{slug}.com"))


def _handle(rng: np.random.Generator) -> str:
    base = _pick(rng, _SLUGS + ("studio", "photo.by.ana", "kenji_shots", "nightowl"))
    return f"@{base}" + ("" if rng.random() < 0.6 else str(int(rng.integers(1, 99))))


def _sc(rng: np.random.Generator) -> str:
    forms = (
        _pick(rng, _SC_FIXED), f"©{_year(rng)} {_pick(rng, _SC_BRANDS)}", f"摄影：{_pick(rng, _SC_NAMES)}",
        f"{_pick(rng, _SC_BRANDS)}", f"{_pick(rng, _SC_BRANDS)} 版权所有",
    )
    return _pick(rng, forms)


def _ai_label(rng: np.random.Generator) -> tuple[str, str]:
    maker = _pick(rng, _AI_MAKERS)
    # As the generators print them: with and without a space after the maker, Chinese and English forms.
    forms = (("AI生成", "sc"), (f"{maker} AI生成", "sc"), (f"{maker}AI生成", "sc"), ("由AI生成", "sc"),
             ("AI Generated", "latin"), ("Made with AI", "latin"), (f"{maker} AI", "sc"), (f"{maker}AI", "sc"),
             ("AI-generated", "latin"), ("内容由AI生成", "sc"), ("本图由AI生成", "sc"), ("图片由AI生成", "sc"),
             ("AI合成", "sc"), ("AI创作", "sc"), ("AI生成内容", "sc"), ("AI制作", "sc"), ("智能生成", "sc"))
    text, script = forms[int(rng.integers(len(forms)))]
    return text, _script_of(text, script)


# Each kind: (script, maker). AI labels, stamps and blocks have their own makers below.
PHRASE_KINDS: dict[str, tuple[str, Callable[[np.random.Generator], str]]] = {
    "brand": ("latin", lambda rng: _pick(rng, _BRANDS)),
    "copyright": ("latin", _copyright),
    "url": ("latin", _url),
    "handle": ("latin", _handle),
    "stock_word": ("latin", lambda rng: _pick(rng, _STOCK_WORDS)),
    "date": ("latin", _date),
    "cjk_sc": ("sc", _sc),
    "cjk_tc": ("tc", lambda rng: _pick(rng, _TC_FIXED)),
    "cjk_jp": ("jp", lambda rng: _pick(rng, _JP_FIXED)),
    "cjk_kr": ("kr", lambda rng: _pick(rng, _KR_FIXED)),
}
# Relative frequency of each kind for a general watermark (corner labels and stamps have their own).
_KIND_WEIGHTS = {
    "brand": 3.0, "copyright": 3.0, "url": 2.0, "handle": 1.5, "stock_word": 2.0, "date": 1.0,
    "cjk_sc": 3.0, "cjk_tc": 0.8, "cjk_jp": 0.8, "cjk_kr": 0.5,
}


def _script_of(text: str, declared: str) -> str:
    """Dates may carry 年月日 even from a latin kind: such text needs a CJK face."""
    return "sc" if declared == "latin" and any(ord(c) > 0x2E80 for c in text) else declared


@dataclass(frozen=True)
class PhrasePolicy:
    """Which kinds of PHRASE_KINDS a draw may use under a held-out choice.

    Train, val and test never get a `held_out` kind; the held-out split (`prefer_held_out`) gets only
    held-out kinds, where any are held out. The default (nothing held out) changes no draw.
    """

    held_out: frozenset[str] = field(default_factory=frozenset)
    prefer_held_out: bool = False

    def allowed(self) -> list[str]:
        """Kind names a draw may use, in `_KIND_WEIGHTS` order (never empty for a plan that keeps one kind)."""
        names = list(_KIND_WEIGHTS)
        if self.prefer_held_out:
            return [n for n in names if n in self.held_out] or names
        return [n for n in names if n not in self.held_out]

    def kind(self, rng: np.random.Generator, wanted: str | None) -> str:
        """`wanted` when allowed (no random draw, so a policy that allows it changes nothing), else one drawn by frequency."""
        names = self.allowed()
        if wanted in names:
            return wanted
        weights = np.array([_KIND_WEIGHTS[n] for n in names])
        return names[int(rng.choice(len(names), p=weights / weights.sum()))]


NO_HOLDOUT = PhrasePolicy()


def make_phrase(rng: np.random.Generator, kind: str | None = None, policy: PhrasePolicy = NO_HOLDOUT) -> Phrase:
    """A random watermark phrase; `kind` asks for one of PHRASE_KINDS (else drawn by frequency).

    A kind the policy does not allow is replaced by an allowed one (any kind fits any style).
    """
    kind = policy.kind(rng, kind)
    script, maker = PHRASE_KINDS[kind]
    text = maker(rng)
    return Phrase(text, _script_of(text, script), kind)


def make_ai_label(rng: np.random.Generator) -> Phrase:
    """A small AI-content label ("AI生成", "XX AI生成", "AI Generated", ...)."""
    text, script = _ai_label(rng)
    return Phrase(text, script, "ai_label")


def make_stamp_phrase(rng: np.random.Generator) -> Phrase:
    """A rubber-stamp word ("CONFIDENTIAL", "DO NOT COPY", "机密", ...)."""
    if rng.random() < 0.25:
        text = _pick(rng, ("机密", "样张", "内部资料", "已审核", "作废"))
        return Phrase(text, "sc", "stamp")
    return Phrase(_pick(rng, _STAMP_WORDS), "latin", "stamp")


def make_block(rng: np.random.Generator, lines: int, policy: PhrasePolicy = NO_HOLDOUT) -> Phrase:
    """A multi-line block (`lines` lines, e.g. "© 2026 Name" / "www.site.com" / "All rights reserved")."""
    kinds = ("copyright", "url", "brand", "handle", "date", "cjk_sc")
    parts = [make_phrase(rng, _pick(rng, kinds), policy) for _ in range(lines)]
    if rng.random() < 0.3:
        parts[-1] = Phrase(_pick(rng, ("All rights reserved", "版权所有 盗用必究", "Licensed image")), "latin", "footer")
    text = "\n".join(p.text for p in parts)
    cjk = [p.script for p in parts if p.script != "latin"]
    return Phrase(text, _script_of(text, cjk[0] if cjk else "latin"), "block", tuple(p.kind for p in parts))


def make_scene_phrase(rng: np.random.Generator) -> Phrase:
    """Ordinary text that belongs to a scene: sign words, prices, street names."""
    text = _pick(rng, _SCENE_WORDS)
    return Phrase(text, _script_of(text, "latin"), "scene")
