"""The dark theme (palette + resources/styles/dark.qss) and the SVG icons in resources/icons."""

from __future__ import annotations

from functools import cache

from PySide6.QtGui import QColor, QIcon, QPalette
from PySide6.QtWidgets import QApplication

from studio.paths import RESOURCES

ICONS_DIR = RESOURCES / "icons"
STYLES_DIR = RESOURCES / "styles"


@cache
def icon(name: str) -> QIcon:
    path = ICONS_DIR / f"{name}.svg"
    return QIcon(str(path)) if path.is_file() else QIcon()


def stylesheet(name: str = "dark") -> str:
    try:
        text = (STYLES_DIR / f"{name}.qss").read_text(encoding="utf-8")
    except OSError:
        return ""
    return text.replace("url(ICONS/", f"url({ICONS_DIR.as_posix()}/")


def apply_dark_theme(app: QApplication) -> None:
    app.setStyle("Fusion")
    pal = QPalette()
    colors = {
        QPalette.ColorRole.Window: "#1b1c1f",
        QPalette.ColorRole.WindowText: "#e4e6eb",
        QPalette.ColorRole.Base: "#2a2c31",
        QPalette.ColorRole.AlternateBase: "#222428",
        QPalette.ColorRole.ToolTipBase: "#2f3137",
        QPalette.ColorRole.ToolTipText: "#e4e6eb",
        QPalette.ColorRole.Text: "#e4e6eb",
        QPalette.ColorRole.Button: "#2f3137",
        QPalette.ColorRole.ButtonText: "#e4e6eb",
        QPalette.ColorRole.BrightText: "#ffffff",
        QPalette.ColorRole.Highlight: "#5b45c9",
        QPalette.ColorRole.HighlightedText: "#ffffff",
        QPalette.ColorRole.Link: "#9d86ff",
        QPalette.ColorRole.PlaceholderText: "#6f7580",
    }
    for role, color in colors.items():
        pal.setColor(role, QColor(color))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        pal.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6b7079"))
    app.setPalette(pal)
    app.setStyleSheet(stylesheet("dark"))
    app.setWindowIcon(icon("app"))


def muted_label(text: str):
    """A small grey label over a control (the panels' field names)."""
    from PySide6.QtWidgets import QLabel

    label = QLabel(text)
    label.setObjectName("Muted")
    return label
