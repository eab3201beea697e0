"""The language: primitives (`ir`, `api`), program state and its interpreter, the tracer, and
the backends programs run on (`lmnb.lang.backend`). `lmnb` re-exports the public names, so
SGLang-style imports (`sglang.lang.ir` → `lmnb.lang.ir`) resolve under `import lmnb as sgl`.

Never imports the notebook layer (magics, widgets, IPython) nor, at import time, the runtime.
"""
