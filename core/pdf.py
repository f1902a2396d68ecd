"""The font every PDF of coldchain sets its text in, and the paragraph styles built on it.

A PDF that only names its font (reportlab's CID fonts such as STSong-Light) leaves the glyphs to the
viewer: a driver's phone without Adobe's Asian font pack shows every Chinese name, address and product
as empty boxes, or nothing at all. So every PDF embeds WenQuanYi Micro Hei (Apache-2.0; all 6,763
GB2312 hanzi, Latin, digits), shipped by the PyPI package ``paperang-p2-fonts-cjk`` that ``pip install``
brings in with the project: nothing is fetched at run time and no font file lives in this repository.
reportlab subsets TrueType fonts, so a sheet carries only the glyphs it uses (tens of kB, not 5 MB).

The package has no bold face. ``BOLD`` names the same face, registered as the family's bold, so ``<b>``
markup and bold styles stay readable (emphasis comes from size, colour and background instead) rather
than falling back to a base-14 font that has no Chinese and is not embedded.

New PDFs (audit reports, trace reports) start from :func:`document`, take their styles from
:func:`styles` or :func:`paragraph_style` and their tables' from :func:`table_style`, and pass data
through :func:`escape` before it goes into markup. reportlab is imported inside the functions, as the
exports do, so importing this module costs nothing to an API process that prints no PDF.
"""

from __future__ import annotations

import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reportlab.lib.styles import ParagraphStyle, StyleSheet1
    from reportlab.platypus import SimpleDocTemplate, TableStyle

FONT_PACKAGE = "paperang_p2_fonts_cjk"
FONT_RESOURCE = "fonts/wqy-microhei.ttc"
SUBFONT = 0  # the collection's proportional face, "WenQuanYi Micro Hei" (1 is the Mono face)

REGULAR = "WenQuanYiMicroHei"
BOLD = REGULAR  # no bold face in the package: see the module's docstring

_lock = threading.Lock()


def font_path() -> Path:
    """Where the installed package keeps the font collection; a clear error when it is not installed."""
    try:
        path = Path(str(resources.files(FONT_PACKAGE).joinpath(FONT_RESOURCE)))
    except ModuleNotFoundError as exc:
        raise RuntimeError(f"the CJK font package is missing: pip install paperang-p2-fonts-cjk "
                           f"(a dependency of coldchain; {exc})") from exc
    if not path.is_file():
        raise RuntimeError(f"the CJK font package is installed but {path} is not there")
    return path


def register_fonts() -> tuple[str, str]:
    """Register the embedded CJK font with reportlab once per process; return (regular, bold) font names.

    Safe to call before every document: the first call parses the 5 MB collection, later calls only look
    the name up. The lock keeps two threads (API workers) from registering it twice.
    """
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    with _lock:
        if REGULAR not in pdfmetrics.getRegisteredFontNames():
            # registerFont makes a one-face family of a TrueType font: <b> and <i> map onto it
            pdfmetrics.registerFont(TTFont(REGULAR, str(font_path()), subfontIndex=SUBFONT))
    return REGULAR, BOLD


def styles() -> StyleSheet1:
    """reportlab's sample stylesheet with every style set in the embedded font (bold ones in ``BOLD``).

    A fresh stylesheet per call: callers may change sizes without touching another document's styles.
    """
    from reportlab.lib.styles import getSampleStyleSheet

    regular, bold = register_fonts()
    sheet = getSampleStyleSheet()
    for style in sheet.byName.values():
        if hasattr(style, "fontName"):
            style.fontName = bold if "Bold" in style.fontName else regular
    return sheet


def paragraph_style(name: str, parent: ParagraphStyle | None = None, *, bold: bool = False,
                    **attrs: Any) -> ParagraphStyle:
    """A ParagraphStyle in the embedded font; Chinese wraps between any two characters (wordWrap CJK).

    ``parent`` is a style of :func:`styles` (or any ParagraphStyle); ``attrs`` are ParagraphStyle's own
    keywords (fontSize, leading, textColor, ...).
    """
    from reportlab.lib.styles import ParagraphStyle

    regular, bold_name = register_fonts()
    attrs.setdefault("wordWrap", "CJK")
    return ParagraphStyle(name, parent=parent, fontName=bold_name if bold else regular, **attrs)


def document(path: Path | str, **kwargs: Any) -> SimpleDocTemplate:
    """A SimpleDocTemplate whose pages start in the embedded font.

    reportlab's canvas otherwise opens every page in Helvetica, a font that no PDF embeds: nothing is
    drawn with it, but the page still names it and strict checkers (PDF/A, print shops) refuse the file.
    ``kwargs`` are SimpleDocTemplate's (pagesize, margins, title, ...).
    """
    from reportlab.platypus import SimpleDocTemplate

    regular, _ = register_fonts()
    kwargs.setdefault("initialFontName", regular)
    return SimpleDocTemplate(str(path), **kwargs)


def table_style(*commands: tuple, size: float = 8) -> TableStyle:
    """A TableStyle that sets every cell in the embedded font before ``commands`` apply.

    A Table opens each cell in Helvetica 10 unless told otherwise, even when the cells hold Paragraphs.
    """
    from reportlab.platypus import TableStyle

    regular, _ = register_fonts()
    return TableStyle([("FONT", (0, 0), (-1, -1), regular, size), *commands])


def escape(text: object) -> str:
    """Data as Paragraph markup: a customer called "A&B <VIP>" must print as such, not break the parser."""
    return str("" if text is None else text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
