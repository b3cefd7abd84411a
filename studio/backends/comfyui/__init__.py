"""A ComfyUI server as the studio's engine: a client of its HTTP + WebSocket protocol (``client``), the
studio's requests as API-format graphs of core nodes (``graphs``) and the Backend over both (``backend``).

Written from the protocol's interface facts only (ComfyUI is GPL-3.0: none of its code or workflows is here).
No torch and no Qt: everything heavy runs on the server.
"""
