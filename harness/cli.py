"""`loopsweep-eval`: lm-eval's own command line with the `looped` model registered.

    loopsweep-eval --model looped --model_args pretrained=Qwen/Qwen3-4B-Instruct-2507,window=15:19,k=3,integrator=euler,mode=block,kv=first,decode=full --tasks mmlu_pro
    loopsweep-eval run --model hf --model_args pretrained=... --tasks fixture_commonsense_qa --num_fewshot 7

lm-eval 0.4.13 does not discover third-party models, so this script imports `harness.adapter`
(whose `@register_model("looped")` registers the model) and hands over to
`lm_eval.__main__.cli_evaluate`: every argument, subcommand and output is lm-eval's.

Four additions, all outside lm-eval's argument parsing:
- when the command line names no `--include_path`, the project's local tasks
  (`harness.tasks.cli_tasks_dir()`: the fixtures, the embedded model's tasks and, once fetched,
  the real-data `local_*` tasks) are added to `run`, `ls` and `validate`, so
  `--tasks fixture_mmlu_pro` and `--tasks embedded_mc` work offline and `ls tasks` / `validate`
  see them (lm-eval takes one `--include_path`: with your own, add these tasks to it yourself);
- `--help` (and `run --help`) ends with the `looped` model's args, one line each;
- real models and data (`loopsweep-assets`, harness.assets): `pretrained=smollm2-135m` (or
  `gemma3-270m`) in --model_args names the fetched, dequantised folder; a missing asset or a
  real-data task (`local_*`) named before its fetch ends the run with the fetch command;
- `--use_cache` is safe across settings: the adapter binds each response-cache db to the model,
  settings and loop that first wrote it and refuses any other, naming the differing field (see
  `harness.adapter.bind_response_cache`); any other `--model` (`hf`, ...) pointed at a db that
  `looped` stamped is refused before anything loads (`_check_response_cache`): lm-eval would
  serve it the stamped run's answers. (`--model looped` without loop options is `hf`.)
"""
from __future__ import annotations

import json
import re
import sys


def _with_fixture_tasks(argv: list[str]) -> list[str]:
    """argv plus `--include_path <local tasks>` for a `run` (explicit or legacy), `ls` or
    `validate` without one."""
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        return argv
    if any(a == "--include_path" or a.startswith("--include_path=") for a in argv[1:]):
        return argv
    try:
        from harness.tasks import cli_tasks_dir
        return argv + ["--include_path", str(cli_tasks_dir())]
    except Exception as e:  # noqa: BLE001 - local tasks are a convenience, never a reason to fail
        print(f"[loopsweep-eval] local tasks unavailable: {e}", file=sys.stderr)
        return argv


def _arg_value(argv: list[str], flag: str) -> tuple[int, str, str] | None:
    """(index, value, prefix) of `--flag value` (prefix '') or `--flag=value` (prefix
    '--flag=') in argv: `argv[index] == prefix + value`."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return i + 1, argv[i + 1], ""
        if a.startswith(flag + "="):
            return i, a[len(flag) + 1:], flag + "="
    return None


def _with_assets(argv: list[str]) -> list[str]:
    """Real models and data (harness.assets): `pretrained=smollm2-135m` in --model_args becomes the
    fetched folder (for any --model); a missing asset, or a real-data task (--tasks) named before
    `loopsweep-assets fetch tasks`, ends the run here with one line naming the fetch command."""
    from harness import assets
    from harness.tasks.real import missing_data_message

    tasks = _arg_value(argv, "--tasks")
    if tasks is not None:
        msg = missing_data_message(tasks[1].split(","))
        if msg:
            raise SystemExit(f"loopsweep-eval: {msg}")
    found = _arg_value(argv, "--model_args")
    if found is None:
        return argv
    i, body, prefix = found

    def swap(m: re.Match) -> str:
        try:
            return m.group(1) + assets.resolve_model(m.group(2)) + m.group(3)
        except assets.AssetError as e:
            raise SystemExit(f"loopsweep-eval: {e}") from None
    names = "|".join(re.escape(n) for n in assets.MODEL_ASSETS)
    body = re.sub(rf'((?:^|,)\s*pretrained=|"pretrained"\s*:\s*")(?:asset:)?({names})(,|"|$)',
                  swap, body)
    out = list(argv)
    out[i] = prefix + body
    return out


def looped_args_help() -> str:
    """The `looped` model's args (`--model looped --model_args k=v,...`), one line each: every
    LoopConfig field with its default and the first line of its description (looping.config), then
    `recipe` and `loop`; any other key goes to lm-eval's HFLM (`--model hf`'s args)."""
    import dataclasses

    from looping import RECIPES, LoopConfig

    described: dict[str, str] = {}
    name = None
    for line in (LoopConfig.__doc__ or "").splitlines():
        m = re.match(r"    (\w+)\s{2,}(\S.*)", line)
        if m and m.group(1) in {f.name for f in dataclasses.fields(LoopConfig)}:
            name = m.group(1)
            described[name] = m.group(2).strip()
        elif name and line.startswith("     ") and line.strip():
            described[name] += " " + line.strip()
        else:
            name = None
    rows = []
    for f in dataclasses.fields(LoopConfig):
        text = described.get(f.name, "")
        text = re.split(r"\.\s+(?=[A-Z(])", text)[0].rstrip(".")
        rows.append((f"{f.name}={f.default}", text))
    rows.append(("recipe=NAME", "a named preset of the fields above: " + ", ".join(RECIPES)))
    rows.append(("loop=NAME", "the base setting (a recipe name; in Python a LoopConfig or a dict); "
                              "the fields above override it"))
    width = max(len(k) for k, _ in rows) + 2
    return "\n".join(
        ["", "looped model args (--model looped --model_args pretrained=...,k=3,window=15:19):"]
        + [f"  {k.ljust(width)}{v}" for k, v in rows]
        + ["  (no loop arg: the plain model; every other arg is --model hf's: dtype, device, "
           "batch_size, ...)"])


def _asks_help(argv: list[str]) -> bool:
    rest = argv[1:]
    return bool(rest) and (rest[0] in ("-h", "--help") or rest[0] == "run"
                           and any(a in ("-h", "--help") for a in rest[1:]))


def _check_response_cache(argv: list[str]) -> None:
    """`--use_cache PATH` with a model other than `looped` on a db a looped run stamped: end the
    run here, naming the db and its stamp's loop (lm-eval keys that cache by request only)."""
    found = _arg_value(argv, "--use_cache")
    model = _arg_value(argv, "--model")
    if found is None or (model is not None and model[1] == "looped"):
        return
    from harness.adapter import stamped_response_caches

    for path, stamp in stamped_response_caches(found[1]).items():
        loop = stamp.get("loop")
        what = ("the looped setting " + json.dumps(loop, sort_keys=True)[:200] if loop
                else "loopsweep's looped model without a loop")
        raise SystemExit(
            f"loopsweep-eval: --use_cache {found[1]}: {path} was written by {what} (model "
            f"{stamp.get('model')!r}, dtype {stamp.get('dtype')}, batch size "
            f"{stamp.get('batch_size')}); lm-eval keys that cache by request only, so --model "
            f"{model[1] if model else 'hf'} would be served its answers. Use another --use_cache "
            f"path, or --model looped (without loop options it is hf, and checks the stamp).")


def main(argv: list[str] | None = None) -> None:
    import harness.adapter  # noqa: F401  registers `looped`
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0] if sys.argv else "loopsweep-eval", *argv]
    if _asks_help(sys.argv):
        try:
            cli_evaluate()
        finally:
            sys.stdout.flush()
            print(looped_args_help())
        return
    sys.argv = _with_fixture_tasks(_with_assets(list(sys.argv)))
    _check_response_cache(sys.argv)
    cli_evaluate()


if __name__ == "__main__":
    main()
