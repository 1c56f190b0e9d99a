"""Text helpers shared by the layers that show outside text (gateways' answers, delivery
reports) to people: made safe and short enough for one IRC line."""

from __future__ import annotations

__all__ = ["clean_reason"]


def clean_reason(text: str, limit: int = 200) -> str:
    """Gateway text made safe for IRC: one line, no control or format characters (bidi
    overrides included: ``str.isprintable`` refuses them), runs of spaces shrunk, at most
    ``limit`` characters."""
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
