"""lmnb.runtime: the engine (model forward, KV pool, radix cache, scheduler, sampler, grammar).

Never imports the language layer, IPython, ipywidgets or traitlets.
"""

from lmnb.runtime.engine import Engine
from lmnb.runtime.handle import GenerateHandle, GenerateResult, StreamChunk
from lmnb.runtime.loader import ModelNotFoundError
from lmnb.runtime.params import SamplingParams

__all__ = [
    "Engine",
    "GenerateHandle",
    "GenerateResult",
    "ModelNotFoundError",
    "SamplingParams",
    "StreamChunk",
]
