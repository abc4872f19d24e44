"""MkDocs hook: render the reStructuredText markup of the library's docstrings as Markdown.

The docstrings are Google style with a few Sphinx roles and directives, which mkdocstrings
would otherwise print verbatim:

- ``.. math::`` blocks become display math (``$$ ... $$``) for ``pymdownx.arithmatex``;
- ``:math:`x``` becomes inline math ``$x$``;
- ``:class:`~a.b.C``` (and ``:func:``, ``:meth:``, ``:mod:``, ``:attr:``, ``:data:``,
  ``:obj:``, ``:exc:``) become code spans, ``C`` with the ``~`` prefix, ``a.b.C`` without;
- doctest blocks (a ``>>>`` line and what follows up to a blank line) become fenced
  ``pycon`` code blocks; in an ``Example:`` section Markdown would otherwise read the
  ``>>>`` prompts as nested block quotes and the output as Markdown.

The extension is a Markdown preprocessor, so it applies both to the pages and to every
docstring mkdocstrings converts (mkdocstrings reuses the site's Markdown extensions).
"""

from __future__ import annotations

import re

from markdown import Extension
from markdown.preprocessors import Preprocessor
from mkdocs.plugins import event_priority

_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_XREF_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")
_WRAPPED_ROLE = re.compile(r":(?:py:)?[a-z]+:`[^`\n]*\n[^`]*`")
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<rest>.*)$")


def _xref(match: re.Match) -> str:
    tilde, target = match.group(1), match.group(2).strip()
    if tilde:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _inline(line: str) -> str:
    line = _MATH_ROLE.sub(lambda m: f"${m.group(1).strip()}$", line)
    return _XREF_ROLE.sub(_xref, line)


def convert(lines: list[str]) -> list[str]:
    """Converts the RST markup of ``lines`` to Markdown (see the module docstring)."""
    out: list[str] = []
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith(("```", "~~~")):
            in_fence = not in_fence
            out.append(line)
            i += 1
            continue
        if in_fence:
            out.append(line)
            i += 1
            continue
        if stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
                i += 1
            out.extend(
                ["", f"{indent}```pycon", *(f"{indent}{b}" for b in block), f"{indent}```", ""]
            )
            continue
        directive = _MATH_DIRECTIVE.match(line)
        if directive is None:
            out.append(_inline(line))
            i += 1
            continue
        indent = directive.group("indent")
        body = [directive.group("rest")] if directive.group("rest").strip() else []
        i += 1
        # The directive's body: the following blank or more-indented lines.
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)
        ):
            body.append(lines[i].strip())
            i += 1
        while body and not body[-1]:
            body.pop()
        body = [b for b in body if b]
        out.extend(["", f"{indent}$$", *(f"{indent}{b}" for b in body), f"{indent}$$", ""])
    return out


def _join_wrapped_roles(lines: list[str]) -> list[str]:
    """Puts a role whose backquoted text is wrapped over several lines on one line."""
    text = "\n".join(lines)
    text = _WRAPPED_ROLE.sub(lambda m: re.sub(r"\s*\n\s*", " ", m.group(0)), text)
    return text.split("\n")


class _RSTPreprocessor(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        return convert(_join_wrapped_roles(lines))


class RSTMarkupExtension(Extension):
    """Registers the preprocessor ahead of everything that parses blocks."""

    def extendMarkdown(self, md):  # noqa: N802 (Markdown's API)
        md.preprocessors.register(_RSTPreprocessor(md), "scoresde_rst_markup", 35)


@event_priority(100)
def on_config(config):
    config.markdown_extensions.append(RSTMarkupExtension())
    return config
