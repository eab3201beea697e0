"""lmnb.server: `lmnb serve`, SGLang-native and OpenAI-compatible HTTP in front of one engine.

Imports the runtime, FastAPI/Starlette and uvicorn; never the language layer, IPython or the
widgets. `start_server(engine)` serves an engine from a background thread (tests, notebooks);
`serve(model, ...)` loads a model and serves it in the foreground (the command line).
"""

from lmnb.server.app import create_app
from lmnb.server.serve import ServerThread, serve, start_server

__all__ = ["ServerThread", "create_app", "serve", "start_server"]
