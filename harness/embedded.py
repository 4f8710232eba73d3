"""The embedded default model: a tiny Qwen3 trained offline, deterministically, on Python's stdlib.

Owns: the training corpus (the first `N_TRAIN_FILES` `.py` files of the running Python's standard
library, sorted by path: text that ships with every Python), the byte-level tokenizer (a
`tokenizers` BPE with no merges = one token per byte, wrapped as `PreTrainedTokenizerFast` with
eos/pad), the model config (a standard HF Qwen3: pre-norm, 8 layers, hidden 128), the training loop,
and the generator of the two embedded lm-eval tasks (harness/tasks/embedded/), whose items come
from held-out stdlib files that are not in the training corpus.

Invariants:
- `build(out_dir, steps=..., seed=...)` is a pure function of (seed, steps, reduced, threads, the
  training files' bytes, torch version): same inputs -> bit-identical safetensors (one fixed thread
  count, CPU, a seeded generator for init and batch sampling). A different
  Python version ships different stdlib files, so the data hashes are recorded in `build.json`.
- Token id `b` is byte `b` (0..255); 256 = `<|endoftext|>` (eos, also used as bos), 257 = `<|pad|>`.
- The committed model (`embedded_model_path()`) was built with `python scripts/build_embedded.py`;
  users and CI never train.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import platform
import random
import sysconfig
import time
from pathlib import Path

import torch

# ---- the recipe (changing any of these changes the committed weights) -------------------------
SEED = 0
STEPS = 900
N_TRAIN_FILES = 200          # the first N stdlib .py files, sorted by posix path
SEQ_LEN = 256                # training sequence length in bytes (eval prompts stay below it)
BATCH = 16
LR = 3e-3
WARMUP = 30
THREADS = 2                  # deterministic for a fixed thread count (recorded in build.json)
EOS, PAD = "<|endoftext|>", "<|pad|>"
EOS_ID, PAD_ID = 256, 257

DATA_DIR = Path(__file__).parent / "data" / "embedded"
TASK_DIR = Path(__file__).parent / "tasks" / "embedded"


def embedded_model_path() -> Path:
    """The committed embedded model folder (config.json, model.safetensors, tokenizer, build.json)."""
    path = DATA_DIR / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the embedded model is missing at {path}; rebuild it with "
                                "`python scripts/build_embedded.py` (about 8 minutes on 2 CPU cores)")
    return path


# ---- data --------------------------------------------------------------------------------------
def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[str]:
    """All `.py` files of the standard library (site-packages excluded), as sorted posix paths."""
    return list(_stdlib_files(str(stdlib_dir())))


@functools.lru_cache(maxsize=2)
def _stdlib_files(root: str) -> tuple[str, ...]:
    root = Path(root)
    return tuple(sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")
                  if "site-packages" not in p.parts and "dist-packages" not in p.parts))


def training_files(n: int = N_TRAIN_FILES) -> list[str]:
    return stdlib_files()[:n]


def heldout_files(n_train: int = N_TRAIN_FILES) -> list[str]:
    """Held-out source files for held-out loss and the tasks: every 7th file after the training
    ones, skipping tests, idlelib and the codec tables, so that they are ordinary library code from
    many packages."""
    rest = [f for f in stdlib_files()[n_train:]
            if "/test" not in "/" + f and not f.startswith(("idlelib/", "encodings/"))]
    return rest[::5]


def read_texts(files: list[str]) -> list[bytes]:
    root = stdlib_dir()
    return [(root / f).read_bytes() for f in files]


def training_corpus(n: int = N_TRAIN_FILES) -> bytes:
    """The training text: the files' bytes joined by newlines (the model sees them EOS-separated)."""
    return b"\n".join(read_texts(training_files(n)))


def _sha(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()


def _stream(texts: list[bytes]) -> torch.Tensor:
    """Token ids of documents separated by EOS (byte b -> id b)."""
    ids: list[int] = []
    for t in texts:
        ids.extend(t)
        ids.append(EOS_ID)
    return torch.tensor(ids, dtype=torch.long)


# ---- tokenizer and config ----------------------------------------------------------------------
def build_tokenizer():
    """Byte-level tokenizer: 256 byte tokens (id = byte value) + eos + pad, no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = _bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS, PAD])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                   pad_token=PAD, model_max_length=512)
    assert fast.convert_tokens_to_ids([EOS, PAD]) == [EOS_ID, PAD_ID]
    return fast


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the one ByteLevel uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def model_config(reduced: bool = False):
    from transformers import Qwen3Config

    size = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16) if reduced else \
        dict(hidden_size=128, intermediate_size=384, num_hidden_layers=8, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32)
    return Qwen3Config(vocab_size=258, max_position_embeddings=512, tie_word_embeddings=True,
                       rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
                       bos_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
                       attention_dropout=0.0, use_cache=True, dtype="float32", **size)


# ---- training ----------------------------------------------------------------------------------
def _batch(stream: torch.Tensor, gen: torch.Generator, batch: int, seq: int) -> torch.Tensor:
    starts = torch.randint(0, len(stream) - seq - 1, (batch,), generator=gen)
    return torch.stack([stream[s:s + seq + 1] for s in starts.tolist()])


@torch.no_grad()
def heldout_loss(model, stream: torch.Tensor, n_seq: int = 64, seq: int = SEQ_LEN) -> float:
    """Mean next-byte loss (nats) on `n_seq` evenly spaced windows of a held-out stream."""
    model.eval()
    step = max(1, (len(stream) - seq - 1) // n_seq)
    xs = torch.stack([stream[i * step:i * step + seq + 1] for i in range(n_seq)])
    total = 0.0
    for chunk in xs.split(16):
        out = model(input_ids=chunk[:, :-1])
        total += torch.nn.functional.cross_entropy(
            out.logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum").item()
    model.train()
    return total / (xs.shape[0] * seq)


def build(out_dir, *, steps: int = STEPS, seed: int = SEED, reduced: bool = False,
          threads: int = THREADS, n_files: int | None = None, progress: bool = True) -> dict:
    """Train the embedded model and save it (model + tokenizer + build.json) into `out_dir`.

    `reduced=True` is the same code path at toy size (2 layers, hidden 32, 5 files, short
    sequences): seconds, for tests. Returns the metadata written to build.json.
    """
    from tqdm.auto import tqdm
    from transformers import Qwen3ForCausalLM

    out_dir = Path(out_dir)
    n_files = n_files or (5 if reduced else N_TRAIN_FILES)
    seq, batch = (64, 4) if reduced else (SEQ_LEN, BATCH)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # CPU kernels are deterministic for a fixed thread count
    t0 = time.time()
    try:
        files = training_files(n_files)
        texts = read_texts(files)
        train = _stream(texts)
        held_files = heldout_files()[: (2 if reduced else 20)]
        held = _stream(read_texts(held_files))

        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = Qwen3ForCausalLM(model_config(reduced)).float()
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
        warm = min(WARMUP, max(1, steps // 10))

        def lr_at(i: int) -> float:  # linear warm-up, cosine decay to 10%
            if i < warm:
                return LR * (i + 1) / warm
            p = (i - warm) / max(1, steps - warm)
            return LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

        losses = []
        bar = tqdm(range(steps), desc="embedded model", disable=not progress, mininterval=2)
        for i in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(i)
            xy = _batch(train, gen, batch, seq)
            out = model(input_ids=xy[:, :-1])
            loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), xy[:, 1:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            if i % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        train_s = time.time() - t0
        model.eval()
        n_eval = 4 if reduced else 64
        meta = {
            "name": "loopsweep-embedded",
            "seed": seed, "steps": steps, "reduced": reduced, "threads": threads,
            "seq_len": seq, "batch": batch, "lr": LR, "warmup": warm,
            "torch": torch.__version__, "python": platform.python_version(),
            "transformers": __import__("transformers").__version__,
            "train_files": {"n": len(files), "first": files[0], "last": files[-1],
                            "bytes": sum(map(len, texts)), "sha256": _sha(texts)},
            "heldout_files": {"n": len(held_files), "files": held_files,
                              "sha256": _sha(read_texts(held_files))},
            "train_loss_last50": sum(losses[-50:]) / len(losses[-50:]),
            "heldout_loss": heldout_loss(model, held, n_eval, seq),
            "train_sample_loss": heldout_loss(model, train, n_eval, seq),
            "train_seconds": round(train_s, 1),
            "n_params": sum(p.numel() for p in model.parameters()),
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        model.generation_config.pad_token_id = PAD_ID
        model.generation_config.eos_token_id = EOS_ID
        model.generation_config.bos_token_id = EOS_ID
        model.save_pretrained(out_dir, safe_serialization=True)
        build_tokenizer().save_pretrained(out_dir)
        meta["weights_sha256"] = hashlib.sha256((out_dir / "model.safetensors").read_bytes()).hexdigest()
        (out_dir / "build.json").write_text(json.dumps(meta, indent=2) + "\n")
        return meta
    finally:
        torch.set_num_threads(prev_threads)


# ---- the embedded lm-eval tasks (harness/tasks/embedded/) -------------------------------------
# Items come from `heldout_files()` only, and an item is kept only if its answer line (stripped)
# never occurs as a line of the training corpus and its full text is not a substring of it. Item
# selection is rule-based and seeded; it never looks at a model.
N_MC, N_GEN = 200, 150
CONTEXT_BYTES = 112          # prompts stay far below the training sequence length (and the demo fast)
SPAN = 24                    # MC option length in bytes
GIVEN = 3                    # gen: characters of the identifier given in the prompt
STOPS = ("\n", " ", "(", ")", "[", "]", ".", ",", ":", "=")   # = embedded_gen.yaml `until`


def training_lines(corpus: bytes | None = None) -> set[str]:
    """The stripped lines of the training corpus (for the held-out checks)."""
    corpus = training_corpus() if corpus is None else corpus
    return {ln.strip() for ln in corpus.decode("utf-8", "replace").splitlines()}


def _file_lines(path_text: bytes) -> list[str] | None:
    try:
        text = path_text.decode("ascii")
    except UnicodeDecodeError:
        return None
    return [ln.rstrip() for ln in text.splitlines()]


def _context(lines: list[str], i: int) -> str | None:
    """Whole lines directly before line i, at most CONTEXT_BYTES, at least 3 non-blank lines."""
    ctx: list[str] = []
    size = 0
    for j in range(i - 1, -1, -1):
        if size + len(lines[j]) + 1 > CONTEXT_BYTES:
            break
        ctx.insert(0, lines[j])
        size += len(lines[j]) + 1
    if sum(1 for c in ctx if c.strip()) < 3:
        return None
    return "\n".join(ctx) + "\n"


def _shape(span: str) -> tuple[int, int]:
    return span.count("\n"), span.count(" ") // 2


def _is_table(lines: list[str]) -> bool:
    """Data tables (e.g. html/entities.py: thousands of `'name;': '\\u...',` lines) make
    trivially spotted distractors; skip files where most non-blank lines end with a comma."""
    body = [ln for ln in lines if ln.strip()]
    return sum(ln.endswith(",") for ln in body) > 0.5 * len(body)


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def make_tasks(out_dir=TASK_DIR, seed: int = SEED) -> dict:
    """Write mc.jsonl (the next SPAN bytes of held-out code among 4 SPAN-byte spans, 3 of them from
    other held-out files, at random offsets; gold position balanced over A-D) and gen.jsonl (complete an identifier
    of a held-out line that occurs earlier in the prompt) into `out_dir`. Returns item counts."""
    import re

    rng = random.Random(seed)
    corpus = training_corpus()
    seen = training_lines(corpus)
    files = heldout_files()
    per_file = {f: _file_lines(t) for f, t in zip(files, read_texts(files))}
    per_file = {f: ls for f, ls in per_file.items() if ls and not _is_table(ls)}

    def fresh(line: str, text: str) -> bool:
        return line.strip() not in seen and text.encode() not in corpus

    # candidate answer lines: code, not comments/docstring-ish fragments, 12..64 bytes stripped
    cands = []
    for f, lines in per_file.items():
        for i, ln in enumerate(lines):
            s = ln.strip()
            if 12 <= len(s) <= 64 and not s.startswith(("#", '"', "'")) and ln.isascii():
                cands.append((f, i))
    rng.shuffle(cands)

    # multiple choice: the prompt ends inside the answer line; the options are the next SPAN
    # bytes of the file (they may cross line ends) and SPAN-byte windows of other held-out files
    # with the same count of newlines and of spaces (+-1): blank runs are cheap to predict, so an
    # all-space distractor would win on surface statistics alone
    mc, used = [], set()
    texts = {f: "\n".join(lines) + "\n" for f, lines in per_file.items()}
    names = sorted(texts)
    for f, i in cands:
        if len(mc) == N_MC:
            break
        lines = per_file[f]
        ctx, line = _context(lines, i), lines[i]
        follow = "\n".join(lines[i:i + 6]) + "\n"
        if ctx is None or line.strip() in used or len(follow) < len(line) + SPAN:
            continue
        c = rng.randrange(0, len(line))
        prompt, gold = ctx + line[:c], follow[c:c + SPAN]
        if not fresh(line, prompt + gold):
            continue
        opts = []
        while len(opts) < 3:
            g = names[rng.randrange(len(names))]
            o = rng.randrange(0, len(texts[g]) - SPAN + 1)
            span = texts[g][o:o + SPAN]
            if g != f and span != gold and span not in opts and span.isascii() \
                    and _shape(span) == _shape(gold):
                opts.append(span)
        used.add(line.strip())
        mc.append({"file": f, "line": i + 1, "source_line": line, "context": prompt, "gold": gold,
                   "distractors": opts})
    positions = [k % 4 for k in range(len(mc))]
    rng.shuffle(positions)
    for item, pos in zip(mc, positions):
        choices = list(item.pop("distractors"))
        choices.insert(pos, item["gold"])
        item["choices"] = choices
        item["label"] = pos

    # generation: complete an identifier of a held-out line that also occurs in the prompt (a copy
    # the model has to find); the prompt gives its first GIVEN characters, generation stops at the
    # first non-identifier character (the task's `until` list)
    gen, used = [], set()
    for f, i in cands:
        if len(gen) == N_GEN:
            break
        lines = per_file[f]
        ctx, line = _context(lines, i), lines[i]
        if ctx is None or line.strip() in used:
            continue
        for m in re.finditer(_IDENT, line):
            ident = m.group()
            nxt = line[m.end():m.end() + 1]
            if len(ident) >= GIVEN + 3 and ident in ctx and (nxt == "" or nxt in STOPS) \
                    and not line[:m.start()].endswith(tuple("0123456789")):
                break
        else:
            continue
        prompt, answer = ctx + line[:m.start() + GIVEN], ident[GIVEN:]
        if not fresh(line, ctx + line):
            continue
        used.add(line.strip())
        gen.append({"file": f, "line": i + 1, "source_line": line, "prompt": prompt,
                    "answer": answer})

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, items in (("mc.jsonl", mc), ("gen.jsonl", gen)):
        with open(out_dir / name, "w") as fh:
            for k, item in enumerate(items):
                fh.write(json.dumps({"id": k, **item}) + "\n")
    return {"mc": len(mc), "gen": len(gen)}
