"""The served model's shape contract, checked once when the artifact loads, before any request.

The allow-list (`artifact.served_classes`) stops a forged pickle from running code, but an allowed
class can still be rebuilt with any state: a layer of the wrong width, a head count that does not
divide it, a prompt naming tokens past the vocabulary, a NaN LayerNorm, a tokenizer that does not
parse, an image size of 10^5 (tens of GB for one resize). Each of those loaded, then failed every
request with a 500 or killed the process. This walks the model once, from the root down, and reads
only shapes, dtypes, plain attributes and the small float tensors (norms, biases, scales, position
tables, convs: 21 MiB at base size, which the first request reads anyway); the int8 weights, most
of `model.pt`, are never read, so the check costs milliseconds, not a second pass over the file.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, NoReturn, cast

import numpy as np
import torch
from torch import nn

from handler.florence.preprocess import ImageSpec
from handler.florence.runtime.int8 import Int8Linear
from handler.florence.runtime.model import DecodeSpec, FastFlorence
from handler.florence.runtime.text import POSITION_OFFSET, DecoderLayer, EncoderLayer, TextModel, TiedInt8Head
from handler.florence.runtime.vision import (
    ChannelAttention,
    MixingBlock,
    Mlp,
    PatchEmbed,
    Projector,
    VisionTower,
    WindowAttention,
)
from handler.florence.tasks import MAX_NEW_TOKENS, Task

PIL_RESAMPLING_FILTERS = range(6)
"""NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING: the values `Image.resize` accepts."""
BFLOAT16_EXPONENT = 0x7F80
"""The exponent bits of a bfloat16; all set means inf or NaN."""
FINITE_CHECK_BLOCK = 1 << 16
"""Elements `_finite` judges at a time: its numpy temporaries stay near 64 K elements, not a tensor's size."""
MAX_TOKENIZER_JSON_CHARS = 16 << 20
"""Florence-2's tokenizer JSON is 1.6 MiB with its BPE merges (0.9 MiB as `fuse` pickles it, without them);
parsing one ten times larger is no tokenizer we built."""


class MalformedModel(ValueError):
    """The unpickled model is not one the runtime can serve; the message names where and why."""


def _fail(where: str, problem: str) -> NoReturn:
    raise MalformedModel(f"{where}: {problem}")


def _integer(value: object, where: str, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bounds = f"from {low}" + (f" to {high}" if high is not None else "")
        _fail(where, f"{value!r} is not an integer {bounds}")
    return value


def _number(value: object, where: str, positive: bool = False) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        _fail(where, f"{value!r} is not a finite number")
    if positive and value <= 0:
        _fail(where, f"{value!r} is not a positive number")
    return float(value)


def _flag(value: object, where: str) -> bool:
    if type(value) is not bool:
        _fail(where, f"{value!r} is not a bool")
    return value


def _pair(value: object, where: str, low: int) -> tuple[int, int]:
    if type(value) is not tuple or len(value) != 2:
        _fail(where, f"{value!r} is not a pair of integers")
    return _integer(value[0], where, low), _integer(value[1], where, low)


def _tensor(value: object, where: str, dtypes: Iterable[torch.dtype], shape: tuple[int, ...]) -> torch.Tensor:
    """A plain CPU tensor of one of `dtypes` and exactly `shape`; float ones must hold no NaN or inf."""
    if type(value) not in (torch.Tensor, nn.Parameter):
        _fail(where, f"is a {type(value).__name__}, not a tensor")
    tensor: torch.Tensor = value  # type: ignore[assignment]
    if tensor.device.type != "cpu" or tensor.layout != torch.strided or tensor.is_quantized:
        _fail(where, "is not a dense CPU tensor")
    if tensor.dtype not in tuple(dtypes):
        _fail(where, f"has dtype {tensor.dtype}")
    if tuple(tensor.shape) != shape:
        _fail(where, f"has shape {tuple(tensor.shape)}, expected {shape}")
    if tensor.is_floating_point() and not _finite(tensor):
        _fail(where, "holds NaN or infinite values")
    return tensor


def _finite(tensor: torch.Tensor) -> bool:
    """No NaN or inf, judged by numpy on the tensor's own memory, on this thread, a block at a time.

    torch's reductions split a tensor over 32k elements across its OpenMP threads; on two busy cores
    waking them cost 8-16 ms per 65k-element tensor (base size: 60 ms for one position table), and
    the workers' spin then slowed the int8 packing that follows. numpy's single-threaded pass costs
    microseconds. bfloat16, which numpy lacks, is read as its bits: an all-ones exponent is inf or NaN.
    Whole-tensor temporaries peaked at 13.5 MiB at base size, which the heap kept (`reuse_freed_heap`)
    and serving's peak RSS showed; blocks of `FINITE_CHECK_BLOCK` elements keep them small.
    """
    data = tensor.detach()
    bits = data.dtype == torch.bfloat16
    array = (data.view(torch.int16) if bits else data).numpy()
    if array.size == 0:
        return True
    array = array.reshape(1) if array.ndim == 0 else array
    rows = max(1, FINITE_CHECK_BLOCK // max(1, array[0].size))
    for start in range(0, len(array), rows):
        block = array[start : start + rows]
        if (bool(((block & BFLOAT16_EXPONENT) == BFLOAT16_EXPONENT).any())) if bits else not np.isfinite(block).all():
            return False
    return True


def _module(value: object, where: str, kinds: type | tuple[type, ...], children: Iterable[str] = ()) -> Any:
    """`value` is exactly one of `kinds` (not a subclass), with exactly the submodules `children`, no hooks,
    empty caches, and no instance attribute hiding one of its class (a pickled `forward` or `runtime`)."""
    allowed = kinds if isinstance(kinds, tuple) else (kinds,)
    if type(value) not in allowed:
        _fail(where, f"is a {type(value).__name__}, expected {' or '.join(k.__name__ for k in allowed)}")
    state = vars(value)
    for name, attribute in state.items():
        if hasattr(type(value), name):
            _fail(where, f"its pickled state overrides {type(value).__name__}.{name}")
        if "hooks" in name and (not isinstance(attribute, dict) or attribute):
            _fail(where, f"carries {name}")
    for cache in getattr(type(value), "caches", ()):
        if state.get(cache) is not None:
            _fail(where, f"its cache {cache} is pickled (caches are rebuilt after loading)")
    _flag(state.get("training"), f"{where}.training")
    for table in ("_modules", "_parameters", "_buffers"):
        if type(state.get(table)) not in (dict, OrderedDict):
            _fail(where, f"its {table} is not a dict")
    if set(state["_modules"]) != set(children):
        _fail(where, f"has submodules {sorted(state['_modules'])}, expected {sorted(children)}")
    return value


def _module_list(value: object, where: str) -> list[Any]:
    """An nn.ModuleList's entries, numbered from 0 as nn.ModuleList numbers them."""
    if type(value) is not nn.ModuleList:
        _fail(where, f"is a {type(value).__name__}, expected ModuleList")
    count = len(vars(value).get("_modules") or ())
    return list(_module(value, where, nn.ModuleList, [str(i) for i in range(count)]))


def _layer_norm(value: object, where: str, width: int) -> None:
    norm = _module(value, where, nn.LayerNorm)
    if norm.normalized_shape != (width,) or norm.elementwise_affine is not True:
        _fail(where, f"normalizes {norm.normalized_shape}, expected ({width},) with weight and bias")
    _number(norm.eps, f"{where}.eps", positive=True)
    _tensor(norm.weight, f"{where}.weight", [torch.float32], (width,))
    _tensor(norm.bias, f"{where}.bias", [torch.float32], (width,))


def _int8_linear(value: object, where: str, in_features: int, out_features: int | None = None) -> int:
    """Check one int8 layer that reads `in_features`; returns its output width."""
    layer = _module(value, where, Int8Linear)
    if not isinstance(layer.weight_int8, torch.Tensor) or layer.weight_int8.dim() != 2:
        _fail(f"{where}.weight_int8", "is not a matrix")
    rows = layer.weight_int8.shape[0] if out_features is None else out_features
    _tensor(layer.weight_int8, f"{where}.weight_int8", [torch.int8], (rows, in_features))
    if (layer.out_features, layer.in_features) != (rows, in_features):
        _fail(where, f"says {layer.in_features} -> {layer.out_features} but its weight is {in_features} -> {rows}")
    scales = layer.weight_scale.numel() if isinstance(layer.weight_scale, torch.Tensor) else -1
    if scales not in (1, rows):
        _fail(f"{where}.weight_scale", f"has {scales} values for {rows} rows")
    scale = _tensor(layer.weight_scale, f"{where}.weight_scale", [torch.float64], (scales,))
    if not bool((scale > 0).all()):
        _fail(f"{where}.weight_scale", "is not positive")
    _tensor(layer.weight_zero_point, f"{where}.weight_zero_point", [torch.int64], (scales,))
    if layer.bias is not None:
        _tensor(layer.bias, f"{where}.bias", [torch.float32], (rows,))
    _flag(layer.reduce_range, f"{where}.reduce_range")
    return rows


def _conv(value: object, where: str, in_channels: int, dtypes: Iterable[torch.dtype]) -> nn.Conv2d:
    conv = _module(value, where, nn.Conv2d)
    out_channels = _integer(conv.out_channels, f"{where}.out_channels", 1)
    groups = _integer(conv.groups, f"{where}.groups", 1)
    if conv.in_channels != in_channels or in_channels % groups or out_channels % groups:
        _fail(where, f"reads {conv.in_channels} channels in {groups} groups; {in_channels} arrive")
    kernel = _pair(conv.kernel_size, f"{where}.kernel_size", 1)
    _pair(conv.stride, f"{where}.stride", 1)
    _pair(conv.padding, f"{where}.padding", 0)
    if _pair(conv.dilation, f"{where}.dilation", 1) != (1, 1) or conv.transposed is not False:
        _fail(where, "is dilated or transposed")
    if conv.padding_mode != "zeros" or conv.output_padding != (0, 0):
        _fail(where, f"pads with {conv.padding_mode!r}")
    dtypes = list(dtypes)
    weight = _tensor(conv.weight, f"{where}.weight", dtypes, (out_channels, in_channels // groups, *kernel))
    if conv.bias is not None:
        _tensor(conv.bias, f"{where}.bias", [weight.dtype], (out_channels,))
    return conv


def _conv_output(conv: nn.Conv2d, size: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) `conv` makes of a `size` input, by nn.Conv2d's arithmetic."""
    padding = cast(tuple[int, int], conv.padding)  # `_conv` checked it is a pair, not "same"
    height, width = (
        (side + 2 * pad - (kernel - 1) - 1) // stride + 1
        for side, pad, kernel, stride in zip(size, padding, conv.kernel_size, conv.stride, strict=True)
    )
    return height, width


def _mixing_block(value: object, where: str, width: int) -> None:
    block = _module(value, where, MixingBlock, ("conv1", "norm1", "attn", "conv2", "norm2", "mlp"))
    for name in ("conv1", "conv2"):  # depthwise 3 x 3 with the residual folded in (MixingBlock.weights)
        conv = _conv(getattr(block, name), f"{where}.{name}", width, [torch.float32])
        shape = (conv.out_channels, conv.groups, conv.kernel_size, conv.stride, conv.padding)
        if shape != (width, width, (3, 3), (1, 1), (1, 1)):
            _fail(f"{where}.{name}", "is not a depthwise 3 x 3 conv with stride 1 and padding 1")
    _layer_norm(block.norm1, f"{where}.norm1", width)
    _layer_norm(block.norm2, f"{where}.norm2", width)
    attn = _module(block.attn, f"{where}.attn", (WindowAttention, ChannelAttention), ("qkv", "proj"))
    heads_name = "num_heads" if type(attn) is WindowAttention else "groups"
    heads = _integer(getattr(attn, heads_name), f"{where}.attn.{heads_name}", 1)
    if width % heads:
        _fail(f"{where}.attn", f"{heads} heads do not divide {width} channels")
    if type(attn) is WindowAttention:
        _integer(attn.window, f"{where}.attn.window", 1)
        _number(attn.scale, f"{where}.attn.scale")
    _int8_linear(attn.qkv, f"{where}.attn.qkv", width, 3 * width)
    _int8_linear(attn.proj, f"{where}.attn.proj", width, width)
    mlp = _module(block.mlp, f"{where}.mlp", Mlp, ("fc1", "fc2"))
    hidden = _int8_linear(mlp.fc1, f"{where}.mlp.fc1", width)
    _int8_linear(mlp.fc2, f"{where}.mlp.fc2", hidden, width)


def _vision(value: object, image_size: int, text_width: int) -> int:
    """Check the tower against the image size and the text width; returns how many tokens it makes."""
    tower = _module(value, "vision", VisionTower, ("embeds", "stages", "projector"))
    embeds = _module_list(tower.embeds, "vision.embeds")
    stages = _module_list(tower.stages, "vision.stages")
    if not embeds or len(stages) != len(embeds):
        _fail("vision.stages", f"{len(stages)} stages for {len(embeds)} patch embeddings")
    channels, size = 3, (image_size, image_size)
    for index in range(len(embeds)):
        where = f"vision.embeds.{index}"
        embed = _module(embeds[index], where, PatchEmbed, ("conv", "norm"))
        conv = _conv(embed.conv, f"{where}.conv", channels, [torch.float32, torch.bfloat16])
        _layer_norm(
            embed.norm, f"{where}.norm", channels if _flag(embed.pre_norm, f"{where}.pre_norm") else conv.out_channels
        )
        channels, size = conv.out_channels, _conv_output(conv, size)
        if min(size) < 1:
            _fail(where, f"leaves no pixels of a {image_size} x {image_size} image")
        blocks = _module_list(stages[index], f"vision.stages.{index}")
        for number in range(len(blocks)):
            _mixing_block(blocks[number], f"vision.stages.{index}.{number}", channels)
    where = "vision.projector"
    projector = _module(tower.projector, where, Projector, ("proj", "norm"))
    row, column = projector.row, projector.column
    if not all(isinstance(t, torch.Tensor) and t.dim() == 2 for t in (row, column)):
        _fail(where, "its row and column tables are not matrices")
    _tensor(row, f"{where}.row", [torch.float32], (max(size[0], row.shape[0]), channels - column.shape[1]))
    _tensor(column, f"{where}.column", [torch.float32], (max(size[1], column.shape[0]), column.shape[1]))
    temporal = projector.temporal
    if not isinstance(temporal, torch.Tensor) or temporal.dim() != 2 or temporal.shape[0] < 1:
        _fail(f"{where}.temporal", "is not a non-empty matrix")
    _tensor(temporal, f"{where}.temporal", [torch.float32], (temporal.shape[0], channels))
    _int8_linear(projector.proj, f"{where}.proj", channels, text_width)
    _layer_norm(projector.norm, f"{where}.norm", text_width)
    return 1 + size[0] * size[1]  # the pooled token, then one per cell


def _text(value: object) -> tuple[int, int, int]:
    """Check the BART encoder-decoder; returns its width, vocabulary size and encoder positions."""
    children = ("lm_head", "enc_norm", "enc_layers", "dec_norm", "dec_layers")
    text = _module(value, "text", TextModel, children)
    head = _module(text.lm_head, "text.lm_head", TiedInt8Head)
    if not isinstance(head.weight_int8, torch.Tensor) or head.weight_int8.dim() != 2 or 0 in head.weight_int8.shape:
        _fail("text.lm_head.weight_int8", "is not a matrix")
    vocab, width = head.weight_int8.shape
    _tensor(head.weight_int8, "text.lm_head.weight_int8", [torch.int8], (vocab, width))
    _number(head.scale, "text.lm_head.scale", positive=True)
    _integer(head.zero_point, "text.lm_head.zero_point", -128, 127)
    _number(text.embed_scale, "text.embed_scale")
    encoder_positions = text.enc_positions.shape[0] if isinstance(text.enc_positions, torch.Tensor) else 0
    _tensor(text.enc_positions, "text.enc_positions", [torch.float32], (encoder_positions, width))
    decoder_positions = text.dec_positions.shape[0] if isinstance(text.dec_positions, torch.Tensor) else 0
    _tensor(text.dec_positions, "text.dec_positions", [torch.float32], (decoder_positions, width))
    steps = POSITION_OFFSET + max(MAX_NEW_TOKENS.values()) + 1
    if decoder_positions < steps:
        _fail("text.dec_positions", f"has {decoder_positions} positions; the longest decode needs {steps}")
    _layer_norm(text.enc_norm, "text.enc_norm", width)
    _layer_norm(text.dec_norm, "text.dec_norm", width)
    encoder = _module_list(text.enc_layers, "text.enc_layers")
    decoder = _module_list(text.dec_layers, "text.dec_layers")
    if not decoder:
        _fail("text.dec_layers", "is empty")
    layers: list[tuple[str, Any, type, tuple[str, ...], tuple[str, ...]]] = [
        (f"text.enc_layers.{i}", layer, EncoderLayer, ("qkv", "o"), ("norm1", "norm2"))
        for i, layer in enumerate(encoder)
    ]
    attention = ("qkv", "o", "cq", "ck", "cv", "co")
    layers += [
        (f"text.dec_layers.{i}", layer, DecoderLayer, attention, ("norm1", "norm2", "norm3"))
        for i, layer in enumerate(decoder)
    ]
    decoder_heads = {decoder[0].heads if type(decoder[0]) is DecoderLayer else None}
    for where, layer, kind, linears, norms in layers:
        _module(layer, where, kind, (*linears, *norms, "fc1", "fc2"))
        heads = _integer(layer.heads, f"{where}.heads", 1)
        if width % heads or (kind is DecoderLayer and heads not in decoder_heads):
            _fail(f"{where}.heads", f"{heads} heads do not divide {width} channels the way the other layers do")
        for name in linears:
            _int8_linear(getattr(layer, name), f"{where}.{name}", width, 3 * width if name == "qkv" else width)
        hidden = _int8_linear(layer.fc1, f"{where}.fc1", width)
        _int8_linear(layer.fc2, f"{where}.fc2", hidden, width)
        for name in norms:
            _layer_norm(getattr(layer, name), f"{where}.{name}", width)
    return width, vocab, encoder_positions


def _image_spec(value: object) -> int:
    if type(value) is not ImageSpec:
        _fail("image_spec", f"is a {type(value).__name__}")
    spec = value
    size = _integer(spec.size, "image_spec.size", 1)
    for name in ("mean", "std"):
        triple = getattr(spec, name)
        if type(triple) is not tuple or len(triple) != 3:
            _fail(f"image_spec.{name}", f"{triple!r} is not three numbers")
        for number in triple:
            _number(number, f"image_spec.{name}", positive=name == "std")
    _integer(spec.resample, "image_spec.resample", PIL_RESAMPLING_FILTERS.start, PIL_RESAMPLING_FILTERS.stop - 1)
    return size


def _decode_spec(value: object, vocab: int) -> DecodeSpec:
    if type(value) is not DecodeSpec:
        _fail("decode_spec", f"is a {type(value).__name__}")
    spec = value
    for name in ("start_id", "eos_id", "image_token_id"):
        _integer(getattr(spec, name), f"decode_spec.{name}", 0, vocab - 1)
    _flag(spec.forced_eos, "decode_spec.forced_eos")
    _flag(spec.clean_up_spaces, "decode_spec.clean_up_spaces")
    return spec


def _prompts(value: object, vocab: int, positions: int, image_token: int, image_tokens: int) -> None:
    """Every task's prompt: known token ids, room in the encoder, one slot per image feature."""
    if type(value) is not dict:
        _fail("prompt_ids", f"is a {type(value).__name__}, not a dict")
    for task in Task:
        ids = value.get(task.value)
        where = f"prompt_ids[{task.value!r}]"
        if type(ids) is not list:
            _fail(where, "is missing" if ids is None else f"is a {type(ids).__name__}, not a list")
        for token in ids:
            _integer(token, where, 0, vocab - 1)
        if len(ids) + POSITION_OFFSET > positions:
            _fail(where, f"{len(ids)} tokens do not fit the encoder's {positions - POSITION_OFFSET} positions")
        slots = ids.count(image_token)
        if slots != image_tokens:
            _fail(where, f"has {slots} image-token slots; the vision tower makes {image_tokens} features")


def _tokenizer(model: FastFlorence) -> None:
    """Parse the tokenizer now: it was parsed at the first request, which a malformed one failed with a 500."""
    source = model.tokenizer_json
    if type(source) is not str or len(source) > MAX_TOKENIZER_JSON_CHARS:
        _fail("tokenizer_json", "is not a tokenizer JSON string of a plausible size")
    try:
        model.tokenizer  # noqa: B018 (builds and keeps the cache)
    except Exception as exc:  # tokenizers raises its own Exception type for bad JSON
        _fail("tokenizer_json", f"does not parse: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}")


def check_served_model(model: object) -> None:
    """Raise MalformedModel unless `model` is a FastFlorence the runtime can serve as it stands."""
    root = _module(model, "model", FastFlorence, ("vision", "text"))
    image_size = _image_spec(root.image_spec)
    width, vocab, positions = _text(root.text)
    image_tokens = _vision(root.vision, image_size, width)
    spec = _decode_spec(root.decode_spec, vocab)
    _prompts(root.prompt_ids, vocab, positions, spec.image_token_id, image_tokens)
    _tokenizer(root)
