"""The desktop studio window (PySide6). Widgets talk to studio.session only; no torch here.

app.py          run_app(): QApplication, dark theme, the window; torch loads after it shows
main_window.py  MainWindow: prompt panel | canvas over gallery | live preview over queue,
                menus, shortcuts (Ctrl+Enter, Esc, Ctrl+S, Ctrl+O, F1), drops, settings
prompt_panel.py PromptPanel: prompts, model, sampler/schedule, steps, CFG, seed, size, batch
canvas.py       Canvas: the current image (ready for mask painting: mask, overlay, tool hooks)
preview.py      PreviewPanel: live steps, step i/n, ETA, step timeline, decode this step
gallery.py      Gallery: results, thumbnails of earlier files read on a background thread
queue_view.py   QueuePanel: the running job and the queued ones (removable)
theme.py        palette, resources/styles/dark.qss, SVG icons from resources/icons
"""
