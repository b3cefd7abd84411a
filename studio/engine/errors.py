"""Errors the engine raises; their messages are written for the artist, one line each."""


class EngineError(Exception):
    """Base class: anything the UI or CLI shows as a plain message."""


class RequestError(EngineError, ValueError):
    """The request itself is invalid (size, sampler, strength, missing image...)."""


class ModelError(EngineError):
    """The model is missing, unreadable or of an unknown layout."""
