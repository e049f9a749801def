"""What the widgets share: closing a widget with every model it made, the running loop (if
any), and HTML escaping."""

from __future__ import annotations

import asyncio
import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ipywidgets as w

__all__ = ["close_all", "escape", "running_loop"]


def close_all(widget: w.Widget) -> None:
    """Close a widget, its children, its layout and its style (each is a model)."""
    for child in getattr(widget, "children", ()):
        close_all(child)
    for part in (getattr(widget, "layout", None), getattr(widget, "style", None), widget):
        if part is not None:
            part.close()


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)
