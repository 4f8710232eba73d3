"""Architecture facts read from a Hugging Face causal LM, generically.

Owns: where the decoder layers live, which layers hold an MoE router, which cache slots size the
masks and positions, which layers share K/V across layers (Gemma 3n / 4), whether the decoder
unpacks tuples from its layers (read from its forward's source), and the refusal of models that
are not decoder stacks. There is no per-family
code: every family transformers 5.x ships keeps its layers at `model.get_decoder().layers`, declares
its router class in `_can_record_outputs["router_logits"]`, and ties each attention module to its
cache slot through `layer_idx`. `SPECIAL` is the one table for a family that breaks a rule
(none needed for the families tested).
"""
from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass

from torch import nn

from .errors import LoopConfigError

# model_type -> overrides of the generic lookup (attribute path of the layer list). Empty today.
SPECIAL: dict[str, dict[str, str]] = {}


@dataclass(frozen=True)
class ArchInfo:
    model_type: str
    decoder: nn.Module            # the base model whose forward loops over `layers`
    layers: nn.ModuleList
    n_layers: int
    router_class: type | None     # the family's router module class (MoE), else None
    moe_layers: tuple[bool, ...]  # per layer: holds a router
    layer_types: tuple[str, ...]  # per layer attention type ('full_attention', 'sliding_attention', ...)
    mask_layers: tuple[int, ...]  # cache slots that size masks / positions (first of each type, and 0)
    tuple_outputs: bool | None = None   # the decoder indexes / unpacks its layers' outputs
    kv_sharing: tuple[int, ...] = ()    # layers that store or reuse shared K/V (Gemma 3n / 4)

    @property
    def is_moe(self) -> bool:
        return any(self.moe_layers)


def _is_stack(module) -> bool:
    return module is not None and isinstance(getattr(module, "layers", None), nn.ModuleList)


def decoder_of(model: nn.Module) -> nn.Module:
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    path = SPECIAL.get(model_type, {}).get("decoder")
    dec = None
    if path:
        dec = model
        for part in path.split("."):
            dec = getattr(dec, part)
    else:
        if hasattr(model, "get_decoder"):
            try:
                dec = model.get_decoder()
            except (AttributeError, NotImplementedError):
                dec = None
        if not _is_stack(dec):
            # `get_decoder` follows `base_model_prefix`, which some heads do not match (llama4_text:
            # prefix 'language_model', attribute 'model'; it returns the head itself). Fall back to
            # the first submodule that owns a `layers` list: the base model under the head.
            dec = next((m for m in model.modules() if _is_stack(m)), dec)
    if not _is_stack(dec):
        raise LoopConfigError(
            f"{type(model).__name__} (model_type {model_type!r}) is not a decoder stack that looping "
            f"supports: expected `model.get_decoder().layers` to be an nn.ModuleList of decoder layers. "
            f"Supported: decoder-only causal LMs from transformers (llama, mistral, qwen2, qwen3, gemma2, "
            f"gemma3, olmo2, olmo3, phi3, granite, smollm3, cohere, glm4, ernie4_5, exaone4, gpt_neox, "
            f"and their MoE relatives).")
    return dec


def layers_return_tuples(decoder: nn.Module) -> bool | None:
    """Whether the decoder's forward unpacks or indexes what a layer returns (True: e.g.
    `layer_outputs = layer(...); hidden_states = layer_outputs[0]` or `h, w = layer(...)`), uses it
    as the hidden states (False), or cannot be read (None). Read from the forward's source: the
    wrappers that replace window layers return a tensor, which such a model would slice."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(type(decoder).forward)))
    except (OSError, TypeError, SyntaxError):
        return None
    for loop in ast.walk(tree):
        if not (isinstance(loop, ast.For) and "self.layers" in ast.unparse(loop.iter)):
            continue
        names = {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)}
        for node in ast.walk(loop):
            if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                    and isinstance(node.value.func, ast.Name) and node.value.func.id in names):
                continue
            target = node.targets[0]
            if isinstance(target, ast.Tuple):
                return True
            if isinstance(target, ast.Name):
                return any(isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name)
                           and sub.value.id == target.id and isinstance(sub.slice, ast.Constant)
                           for sub in ast.walk(loop))
    return None


def kv_sharing_layers(layers) -> tuple[int, ...]:
    """Layers that store their K/V for later layers or reuse another layer's (Gemma 3n / 4:
    `store_full_length_kv`, `is_kv_shared_layer`): a loop over them would hand the sharing layers
    the K/V of whichever pass ran last."""
    return tuple(i for i, layer in enumerate(layers)
                 if any(getattr(m, "store_full_length_kv", False) is True
                        or getattr(m, "is_kv_shared_layer", False) is True for m in layer.modules()))


def router_class(decoder: nn.Module) -> type | None:
    spec = getattr(decoder, "_can_record_outputs", None) or {}
    spec = spec.get("router_logits")
    if isinstance(spec, (list, tuple)):
        spec = spec[0] if spec else None
    if spec is None:
        return None
    return getattr(spec, "target_class", spec)


def find_routers(module: nn.Module, cls: type | None) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, router) for every router inside `module`."""
    if cls is None:
        return []
    found = []
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, cls):
                found.append((parent, name, child))
    return found


def attention_slot(layer: nn.Module) -> int:
    """The cache slot (layer_idx) a decoder layer writes."""
    for m in layer.modules():
        idx = getattr(m, "layer_idx", None)
        if isinstance(idx, int):
            return idx
    raise LoopConfigError(
        f"{type(layer).__name__} has no submodule with an integer `layer_idx`; looping cannot find "
        f"its cache slot.")


def describe_config(config) -> ArchInfo:
    """The ArchInfo of a model described only by its config (a `PretrainedConfig`, a config.json
    path or folder): the model is built on the meta device, so no weights are read or allocated
    (about 0.1 s). Lets a sweep validate windows, MoE options and costs before anything loads."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not hasattr(config, "model_type"):
        config = AutoConfig.from_pretrained(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return describe(model)


def describe(model: nn.Module) -> ArchInfo:
    if isinstance(model, ArchInfo):
        return model
    dec = decoder_of(model)
    cfg = dec.config
    layers = dec.layers
    n = getattr(cfg, "num_hidden_layers", None) or len(layers)
    n = min(n, len(layers))
    rcls = router_class(dec)
    moe = tuple(bool(find_routers(layers[i], rcls)) for i in range(n))
    types = tuple(getattr(cfg, "layer_types", None) or ["full_attention"] * n)[:n]
    mask_layers = {0}
    for t in set(types):
        mask_layers.add(types.index(t))
    return ArchInfo(model_type=getattr(cfg, "model_type", "?"), decoder=dec, layers=layers, n_layers=n,
                    router_class=rcls, moe_layers=moe, layer_types=types,
                    mask_layers=tuple(sorted(mask_layers)), tuple_outputs=layers_return_tuples(dec),
                    kv_sharing=kv_sharing_layers(layers[:n]))
