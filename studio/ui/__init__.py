"""The desktop studio window (PySide6). Widgets talk to studio.session only; no torch here.
The window is wired by the composition root, studio/app.py.

main_window.py     MainWindow: prompt panel | canvas over gallery | live preview over queue,
                   menus, shortcuts, drops, settings, the autosave offer after a crash
prompt_panel.py    PromptPanel: mode, prompts, model, sampler/schedule, steps, CFG, seed, size, batch
canvas_options.py  ModeSwitch (text / image / inpaint / upscale), CanvasOptions (strength, inpaint options)
                   and UpscaleOptions (method, factor, upscaler model, tiles)
canvas.py          Canvas: the document's image and mask; brush / eraser / pan, overlay by rectangle,
                   the "only masked" crop rectangle and the live inpaint overlay
canvas_tools.py    CanvasToolbar: tools, brush size and hardness, show / fill / clear / invert mask
dialogs.py         New canvas, Extend canvas (outpaint)
preview.py         PreviewPanel: live steps, step i/n, ETA, step timeline, decode this step
gallery.py         Gallery: results, thumbnails of earlier files read on a background thread
queue_view.py      QueuePanel: the running job and the queued ones (removable)
widgets.py         section titles, HintList (an empty list that says what goes in it), format_eta
theme.py           palette, resources/styles/dark.qss, SVG icons from resources/icons
"""
