"""Catalog text as the encoders, BM25 and responses should see it: HTML reduced to text, control
characters dropped, NFC, whitespace collapsed.

Descriptions (and often titles and attribute values) come out of shop systems as HTML fragments:
`<p>Fits <b>iPhone&nbsp;15</b></p><ul><li>USB-C</li></ul>`. Tags are stripped (a block-level tag
becomes a space, so `</li><li>` never glues two words; an inline one does not, so
`<b>Sam</b>sung` stays one word), `<script>` / `<style>` content and comments are dropped,
entities are unescaped. Text with no markup in it never goes through the parser, so `5 < 6`,
`AT&T` or `Cable <3m>` come out as they went in.
"""

from __future__ import annotations

import html
import re
import unicodedata
from html.parser import HTMLParser

# A tag (`<p`, `</b`, `<!--`, `<?xml`) or a named / numeric entity with its semicolon.
_TAG = re.compile(r"<[A-Za-z!/?]")
_ENTITY = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});")
_SPACE = re.compile(r"\s+")
# Unicode category Cc is exactly U+0000-U+001F and U+007F-U+009F; these are the ones `\s` misses.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")
_CONTROL_KEEP_TABS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_TABS = re.compile(r"[\n\r\t]")
# Tags that end a run of text: replaced by a space. Every other tag is dropped without one.
_BLOCK = frozenset((
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "fieldset", "figcaption",
    "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol",
    "p", "pre", "section", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
))
_SKIP = frozenset(("script", "style", "template", "noscript"))


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self._skipping += 1
        elif tag in _BLOCK:
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK:  # <br/>, <hr/>
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCK:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def strip_html(text: str) -> str:
    """HTML fragment -> its text (tags stripped, entities unescaped); whitespace is left as it is."""
    if _TAG.search(text):
        parser = _TextOnly()
        parser.feed(text)
        parser.close()  # an unfinished tag at the end (`a <b`) comes back as text
        return "".join(parser.parts)
    if _ENTITY.search(text):
        return html.unescape(text)
    return text


def clean_text(value: str, *, markup: bool = True) -> str:
    """NFC, HTML reduced to text (`markup=True`), control characters dropped, every run of
    whitespace (newlines, tabs, `&nbsp;`) one space, trimmed.

    Identifiers and paths go through with `markup=False` and keep their inner whitespace as given
    (only control characters other than whitespace are dropped)."""
    if markup:
        value = strip_html(value)
    value = unicodedata.normalize("NFC", value)
    if not markup:
        return _TABS.sub(" ", _CONTROL_KEEP_TABS.sub("", value)).strip()
    return _SPACE.sub(" ", _CONTROL.sub("", value)).strip()
