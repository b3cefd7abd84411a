"""The warm engine: a background studio engine process that CLI commands hand their requests to over a private
local socket, so a command after the first pays neither torch's nor diffusers' imports nor the model load.

- `runtime`: where the socket lives (a per-user 0700 folder), which engine a command may use, the permission checks;
- `wire`: the messages (JSON plus raw array bytes: no pickle crosses the socket);
- `client`: torch-free; connects, starts the engine on first use, forwards cancel, returns the GenerateResult;
- `server`: `studio serve`; runs requests on the local backend one at a time and exits after an idle time.
"""
