"""Shared entry-point behaviour: the algorithm subcommand, precision set explicitly, clear one-line
errors for bad input."""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable

import jax

from mbdpo_jax import agents

HELP = ("-h", "--help")


def run_or_explain(job: Callable[[], object]) -> int:
    """Run `job`; a configuration or data error prints one line (no traceback) and exits 2."""
    jax.config.update("jax_default_matmul_precision", "float32")
    try:
        result = job()
    except (ValueError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result is not None:
        print(f"run directory: {result}")
    return 0


def split_algorithm(argv: list[str] | None, default: str, prog: str, doc: str) -> tuple[str, list[str]]:
    """(algorithm, remaining args) from `<prog> [ALGO] [flags]`; no ALGO means `default`.

    `<prog> --help` lists the algorithms; `<prog> ALGO --help` lists that algorithm's settings.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in HELP:
        print(f"usage: {prog} [{'|'.join(agents.ALGORITHMS)}] [flags]\n\n{doc.strip()}\n\n"
              f"algorithms: {', '.join(agents.ALGORITHMS)} (default {default}); "
              f"`{prog} ALGO --help` lists that algorithm's settings with their defaults.")
        raise SystemExit(0)
    if not args or args[0].startswith("-"):
        return default, args
    if args[0] not in agents.ALGORITHMS:
        print(f"error: unknown algorithm {args[0]!r}; allowed: {', '.join(agents.ALGORITHMS)}", file=sys.stderr)
        raise SystemExit(2)
    return args[0], args[1:]


def parse_config(algo: str, options_name: str, options_default: Any, args: list[str], prog: str, doc: str,
                 agent_default: Any = None) -> tuple[Any, Any]:
    """(agent config, options) parsed by tyro with flat flag names (no --agent. prefixes).

    The parser's defaults are `agent_default` (the algorithm's config, or a preset of it) and
    `options_default`, so an explicit flag always wins over a preset.
    """
    import tyro

    agent_cls = agents.config_class(algo)
    agent_default = agent_cls() if agent_default is None else agent_default
    typed = dataclasses.make_dataclass(
        f"{agent_cls.__name__}Run",
        [("agent", agent_cls, dataclasses.field(default=agent_default)),
         (options_name, type(options_default), dataclasses.field(default=options_default))],
        frozen=True)
    parsed = tyro.cli(typed, args=args, prog=f"{prog} {algo}", description=doc,
                      config=(tyro.conf.OmitArgPrefixes,))
    return parsed.agent, getattr(parsed, options_name)


def pop_option(args: list[str], flag: str, default: str, allowed: tuple[str, ...]) -> tuple[str, list[str]]:
    """(value of `flag VALUE` or `flag=VALUE`, the other args); exits 2 naming the allowed values."""
    rest, value, i = [], default, 0
    while i < len(args):
        if args[i] == flag and i + 1 < len(args):
            value, i = args[i + 1], i + 2
            continue
        if args[i].startswith(flag + "="):
            value = args[i].split("=", 1)[1]
        else:
            rest.append(args[i])
        i += 1
    if value not in allowed:
        print(f"error: unknown {flag[2:]} {value!r}; allowed: {', '.join(allowed)}", file=sys.stderr)
        raise SystemExit(2)
    return value, rest
