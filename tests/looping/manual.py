"""Manual layer calls for references: what each decoder layer receives in a plain forward, and
replacing one module's input (to send a hand-computed window output through the model's suffix)."""
import contextlib

import torch

from looping.arch import describe


def batch(vocab=128):
    """A seeded (3, 10) token batch, left-padded (rows 0 and 1) with its attention mask."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[1, :1] = 0
    return ids, mask


@torch.no_grad()
def plain_logits(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


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
