"""Slow explicit reference of the two-phase KV stash (docs/kv-cache.md, "The protocol").

Test-only. It shares nothing with looping/kv.py or looping/runner.py and uses no HF cache object:
it calls the model's own embedding, rotary embedding, decoder layers, final norm and head by hand,
every layer with `past_key_values=None` and a mask built here from the 2-D attention mask.

How a past token's K/V is kept without a cache: a token's key and value in layer i depend only on
the hidden state entering layer i at that token and on its position. So for every layer (and, for
kv='per_pass', every evaluation index) the reference keeps the *input states* whose K/V the
protocol keeps, one per past token. To evaluate layer i on the current tokens' states `x`, it runs
the layer on `[kept past inputs ; x]` with an explicit mask (causal by sequence index, padding keys
removed, sliding window where the layer type has one) and keeps the outputs of the current tokens;
the layer thereby recomputes the kept K/V of the past. Outputs at past positions are discarded, so
what they see does not matter (padding queries that would see nothing are allowed to see
themselves, to stay finite).

The protocol, per forward (prefill or decode step):
- prefix / suffix layers: attend to their kept past + current tokens, keep the current inputs.
- window, when this forward loops (prefill always; decode by `decode` / `decode_n`): the integrator
  (looping.integrators, a pure map) is run over a window callable built here; every evaluation p of
  window layer j attends to the kept past of j (kv first/last), to nothing but the current tokens
  (kv none), or to the past of its own per-evaluation slot (kv per_pass, p = 0 being the ordinary
  slot); evaluations write nothing. Afterwards the kept inputs are:
    first     those of one plain pass of the whole window seeded from x0 (the plain model's
              window inputs; block mode: the natural pass itself), run after the loop;
    chain     each layer's first evaluation (layer mode: on the looped chain);
    last      those of one extra pass of the whole window from the window's output;
    none      nothing;
    per_pass  every evaluation's own, in its own slot.
  The extra passes attend to the kept past like the loop evaluations; under routing 'freeze' the
  'last' pass reuses the natural pass's routing, the 'first' pass (the plain model) routes afresh.
- window, when this forward does not loop: one evaluation per layer, kept (except kv none).
- MoE routing 'freeze': later evaluations of a layer in one forward reuse the router output of the
  natural pass (a forward hook on the router modules replaces their output).
"""
from __future__ import annotations

import inspect

import torch

from looping.arch import find_routers, router_class
from looping.integrators import get_integrator


def layer_types_of(config, n: int) -> list[str]:
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)[:n]
    if getattr(config, "sliding_window", None):  # mistral / mixtral / qwen3_moe style: every layer
        return ["sliding_attention"] * n
    return ["full_attention"] * n


class StashReference:
    """Teacher-forced looped decoding under the stash protocol, one forward at a time.

    `prefill(ids, mask)` starts a sequence (left padding allowed); `step(ids)` feeds the next
    token(s) (all real). Both return the logits of the fed tokens, (B, q, V). `cfg` is a LoopConfig;
    the window, mode and routing are given explicitly (already resolved)."""

    def __init__(self, model, cfg, start: int, end: int, mode: str, routing: str = "n/a"):
        self.model, self.cfg = model, cfg
        self.start, self.end, self.mode, self.routing = start, end, mode, routing
        self.dec = model.get_decoder()
        self.config = self.dec.config
        self.layers = list(self.dec.layers)
        self.n = len(self.layers)
        self.types = layer_types_of(self.config, self.n)
        self.window_size = getattr(self.config, "sliding_window", None)
        self.eager = self.config._attn_implementation == "eager"
        self.rotary_by_type = "layer_type" in inspect.signature(self.dec.rotary_emb.forward).parameters
        self.fn = get_integrator(cfg.integrator).fn
        cls = router_class(self.dec)
        self.routers = {j: [r for _, _, r in find_routers(self.layers[j], cls)] for j in range(start, end)}
        self.layer_calls = [0] * self.n
        self.forward_log: list[dict] = []  # per forward: {'loop': bool, 'calls': per-layer counts}

    # ---- sequence state -------------------------------------------------------------------
    def prefill(self, ids, mask=None, position_ids=None):
        mask = torch.ones_like(ids) if mask is None else mask
        self.mask = torch.zeros(ids.shape[0], 0, dtype=torch.long)
        self.pos = torch.zeros(ids.shape[0], 0, dtype=torch.long)
        self.store: dict = {}     # (layer, slot) -> (B, T_past, C) kept input states; slot 0 = ordinary
        self.decode_steps = 0
        if position_ids is None:  # as `generate` does
            position_ids = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        return self._forward(ids, mask.long(), position_ids, loop=True)

    def step(self, ids, position_ids=None):
        self.decode_steps += 1
        q = ids.shape[1]
        if position_ids is None:
            position_ids = self.pos[:, -1:] + torch.arange(1, q + 1)
        d, n = self.cfg.decode, self.decode_steps
        loop = d == "full" or (d == "first_n" and n <= self.cfg.decode_n)
        return self._forward(ids, torch.ones_like(ids), position_ids, loop=loop)

    # ---- one layer evaluation -------------------------------------------------------------
    def _mask(self, kind: str, q_idx, k_idx, k_valid):
        allowed = k_idx[None, :] <= q_idx[:, None]
        if kind == "sliding_attention":
            allowed = allowed & (k_idx[None, :] > q_idx[:, None] - self.window_size)
        allowed = allowed[None] & k_valid[:, None, :].bool()             # (B, Tq, Tk)
        lonely = ~allowed.any(-1, keepdim=True)                          # padding queries
        allowed = allowed | (lonely & (k_idx[None, :] == q_idx[:, None])[None])
        allowed = allowed[:, None]                                       # (B, 1, Tq, Tk)
        if self.eager:
            return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        return allowed

    def _run_layer(self, i: int, x, past):
        """Layer i on the current states x (B, q, C), attending to `past` kept inputs (or none)."""
        self.layer_calls[i] += 1
        self._calls[i] += 1
        T, q = self.pos.shape[1], x.shape[1]
        if past is not None:
            assert past.shape[1] == T, (i, past.shape, T)
            inp = torch.cat([past, x], dim=1)
            idx = torch.arange(T + q)
            pos = torch.cat([self.pos, self._pos_new], dim=1)
            valid = torch.cat([self.mask, self._mask_new], dim=1)
        else:
            inp, idx, pos, valid = x, torch.arange(T, T + q), self._pos_new, self._mask_new
        kind = self.types[i]
        if self.rotary_by_type:
            pe = self.dec.rotary_emb(inp, pos, kind)
        else:
            pe = self.dec.rotary_emb(inp, pos)
        # linear-attention layers (a recurrent state; hybrids) take the 2-D padding mask, and re-running
        # them over [past inputs, x] from a zero state is what their cached state stands for
        layer_mask = valid if kind == "linear_attention" else self._mask(kind, idx, idx, valid)
        y = self.layers[i](inp, attention_mask=layer_mask, position_ids=pos,
                           position_embeddings=pe, past_key_values=None, use_cache=False)
        return y[:, inp.shape[1] - q:]

    # ---- one forward ----------------------------------------------------------------------
    def _forward(self, ids, mask_new, pos_new, loop: bool):
        self._mask_new, self._pos_new = mask_new, pos_new
        self._calls = [0] * self.n
        kept: dict = {}
        h = self.model.get_input_embeddings()(ids)
        s, e = self.start, self.end
        for i in range(s):
            kept[(i, 0)] = h
            h = self._run_layer(i, h, self.store.get((i, 0)))
        h = self._window(h, loop, kept)
        for i in range(e, self.n):
            kept[(i, 0)] = h
            h = self._run_layer(i, h, self.store.get((i, 0)))
        for key, x in kept.items():
            old = self.store.get(key)
            self.store[key] = x if old is None else torch.cat([old, x], dim=1)
        self.mask = torch.cat([self.mask, mask_new], dim=1)
        self.pos = torch.cat([self.pos, pos_new], dim=1)
        self.forward_log.append({"loop": loop, "calls": list(self._calls)})
        norm = self.dec.norm if hasattr(self.dec, "norm") else self.dec.final_layer_norm  # gpt_neox
        logits = self.model.get_output_embeddings()(norm(h))
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _window(self, h, loop: bool, kept: dict):
        kv = self.cfg.kv
        inputs = {j: [] for j in range(self.start, self.end)}   # j -> input state per evaluation
        captured: dict = {}
        current = {}

        def router_hook(j):
            def hook(mod, args, out):
                if self.routing != "freeze" or current[j] is None:   # None: the plain extra pass
                    return None
                if current[j] == 0:
                    captured[id(mod)] = out
                    return None
                return captured[id(mod)]
            return hook

        hooks = [r.register_forward_hook(router_hook(j)) for j, rs in self.routers.items() for r in rs]

        def evaluate(j, x):
            p = len(inputs[j])
            inputs[j].append(x)
            current[j] = p
            if kv == "none":
                past = None
            elif kv == "per_pass":
                past = self.store.get((j, p))
            else:
                past = self.store.get((j, 0))
            return self._run_layer(j, x, past)

        class Window:
            def __init__(self, js):
                self.layers = [lambda x, j=j: evaluate(j, x) for j in js]

            def __call__(self, x):
                for f in self.layers:
                    x = f(x)
                return x

        def extra_pass(x, plain):
            """One pass of the whole window from x; its inputs are kept. MoE routing: frozen
            layers reuse the natural pass's routing, except in the plain pass (kv first)."""
            for j in range(self.start, self.end):
                kept[(j, 0)] = x
                current[j] = None if plain else 1
                x = self._run_layer(j, x, self.store.get((j, 0)))

        try:
            x_entry = h
            units = [list(range(self.start, self.end))] if self.mode == "block" else \
                [[j] for j in range(self.start, self.end)]
            for js in units:
                g = Window(js)
                x0 = h
                if loop:
                    out = self.fn(g, x0, self.cfg, self._mask_new.bool()).out
                else:
                    out = g(x0)
                if kv == "none":
                    pass
                elif not loop or kv == "chain" or (kv == "first" and self.mode == "block"):
                    for j in js:
                        kept[(j, 0)] = inputs[j][0]
                elif kv == "per_pass":
                    for j in js:
                        for p, x in enumerate(inputs[j]):
                            kept[(j, p)] = x
                h = out
            if loop and kv == "last":
                extra_pass(h, plain=False)
            elif loop and kv == "first" and self.mode == "layer":
                extra_pass(x_entry, plain=True)
        finally:
            for hk in hooks:
                hk.remove()
        return h


@torch.no_grad()
def reference_decode(model, cfg, start, end, mode, prompt_ids, prompt_mask, new_tokens, routing="n/a"):
    """Teacher-forced logits of each generated token's step: list of (B, V), one per new token
    (the prefill's last position, then one per fed token but the last), like generate's
    `output_logits`."""
    ref = StashReference(model, cfg, start, end, mode, routing)
    out = [ref.prefill(prompt_ids, prompt_mask)[:, -1]]
    for t in range(new_tokens.shape[1] - 1):
        out.append(ref.step(new_tokens[:, t:t + 1])[:, -1])
    return out, ref
