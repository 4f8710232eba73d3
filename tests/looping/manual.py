"""Manual layer calls for references: what each decoder layer receives in a plain forward, and
replacing one module's input (to send a hand-computed window output through the model's suffix)."""
import contextlib

import torch

from looping.arch import describe


@torch.no_grad()
def layer_inputs(model, ids, mask):
    """Per decoder layer: (hidden input, kwargs) it receives in a plain forward without a cache."""
    layers, seen, hooks = describe(model).layers, {}, []
    for i, layer in enumerate(layers):
        def hook(mod, args, kwargs, i=i):
            x = args[0] if args else kwargs["hidden_states"]
            seen[i] = (x, {k: v for k, v in kwargs.items() if k != "hidden_states"})
        hooks.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return seen


@contextlib.contextmanager
def replace_input(module, value):
    """While active, `module` receives `value` as its hidden-state input."""
    def hook(mod, args, kwargs):
        if args:
            return (value,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": value}
    h = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        h.remove()
