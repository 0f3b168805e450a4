"""What a browser would fetch for a page: the URL-bearing attributes and CSS references of an HTML file.

Test-only (the report tests use it to prove the page is self-contained)."""

from __future__ import annotations

import re
from html.parser import HTMLParser


class RefCollector(HTMLParser):
    """Collects every URL-bearing attribute and the CSS (``<style>`` blocks and ``style=``) of a page."""

    URL_ATTRS = ("src", "href", "action", "poster", "data", "srcset", "formaction", "background", "ping")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refs: list[str] = []
        self.css: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for k, v in attrs:
            if v is None:
                continue
            if k in self.URL_ATTRS:
                self.refs.extend(v.split(",") if k == "srcset" else [v])
            elif k == "style":
                self.css.append(v)
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.css.append(data)


_CSS_URL = re.compile(r"""url\(\s*["']?([^"')\s]*)|@import\s+["']([^"']*)""", re.I)


def external_refs(page: str) -> list[str]:
    """Every reference in ``page`` that a browser would fetch: any src/href/... attribute or CSS url()/@import
    that is not a ``data:`` URI or an in-page ``#anchor``. A self-contained page has none."""
    p = RefCollector()
    p.feed(page)
    p.close()
    refs = [r.strip() for r in p.refs]
    for css in p.css:
        refs += [(m.group(1) or m.group(2) or "").strip() for m in _CSS_URL.finditer(css)]
    return [r for r in refs if r and not r.lower().startswith(("data:", "#"))]
