"""Themes: Textual's dark and light ones, plus a high-contrast one for projectors, each with
the matching palette for the cells that carry meaning."""

from __future__ import annotations

from textual.theme import Theme

from minikv_tui.dashboard.palette import DARK, HIGH_CONTRAST, LIGHT, Palette

HIGH_CONTRAST_THEME = Theme(
    name="minikv-high-contrast",
    primary="#ffff00",
    secondary="#00ffff",
    accent="#ff00ff",
    foreground="#ffffff",
    background="#000000",
    surface="#000000",
    panel="#1a1a1a",
    success="#00ff00",
    warning="#ffff00",
    error="#ff3030",
    dark=True,
)

THEMES = {
    "dark": "textual-dark",
    "light": "textual-light",
    "high-contrast": HIGH_CONTRAST_THEME.name,
}
"""`--theme` choices to Textual theme names."""


def palette_for(theme_name: str, dark: bool) -> Palette:
    if theme_name == HIGH_CONTRAST_THEME.name:
        return HIGH_CONTRAST
    return DARK if dark else LIGHT
