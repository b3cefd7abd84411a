"""The studio's torch-free, Qt-free vocabulary: every layer may import it.

Requests and results (`requests`), jobs (`jobs`), errors, sampler and schedule names (`samplers`), A1111 prompt
syntax (`prompts`), inpaint geometry (`inpaint`), tiles (`tiling`), PNG parameters (`metadata`), saving images
(`output`), model files and folders (`modelfiles`, `modellibrary`), file hashes (`filehash`), memory options
(`memory`) and the hub's offline switch (`offline`). Nothing here imports torch, diffusers or Qt (an import-linter
contract in pyproject.toml holds it).
"""

from .errors import OUT_OF_MEMORY, EngineError, ModelError, RequestError, describe_error, first_line
from .offline import set_offline_env
from .requests import GenerateRequest, GenerateResult, StepInfo

__all__ = [
    "EngineError",
    "ModelError",
    "RequestError",
    "OUT_OF_MEMORY",
    "describe_error",
    "first_line",
    "set_offline_env",
    "GenerateRequest",
    "GenerateResult",
    "StepInfo",
]
