"""The desktop studio window (PySide6). Widgets talk to studio.session only; no torch here."""
