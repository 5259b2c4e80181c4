"""`--help` / `-h` of the absl programs (grit-train, grit-aot): the program's own flags and the config
groups with their defaults, on a screen or two. absl's own help lists every flag of every imported
library (orbax, jax) before the ones a user needs, and exits 1.
"""

from __future__ import annotations

import importlib.util
import os
import textwrap
from collections.abc import Sequence

from absl import flags

from grit_jax.run_config import base_config

HELP_FLAGS = ("-h", "--help", "-help", "--helpshort")
WIDTH = 110


def wants_help(argv: Sequence[str]) -> bool:
    """True when the command line asks for help (before any `--`, which ends the flags)."""
    words = list(argv[1:])
    words = words[: words.index("--")] if "--" in words else words
    return any(w in HELP_FLAGS for w in words)


def _config_arg(argv: Sequence[str]) -> str | None:
    for i, word in enumerate(argv):
        if word == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith("--config="):
            return word.split("=", 1)[1]
    return None


def load_config_file(spec: str):
    """configs/FILE.py[:ARG] -> its get_config(ARG) (as ml_collections' --config does)."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("help_config", path)
    if module_spec is None or not os.path.isfile(path):
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def config_groups(config) -> list[str]:
    """One paragraph per group: `group: field=default field=default ...`, wrapped."""
    top, out = [], []
    for key, value in config.items():
        if hasattr(value, "items"):
            fields = " ".join(f"{k}={_show(v)}" for k, v in value.items())
            out.append(textwrap.fill(fields, WIDTH, initial_indent=f"  {key}: ", subsequent_indent="      "))
        else:
            top.append(f"{key}={_show(value)}")
    head = textwrap.fill(" ".join(top), WIDTH, initial_indent="  (top level): ", subsequent_indent="      ")
    return [head, *out]


def _show(value) -> str:
    if hasattr(value, "items"):
        return "{" + ",".join(f"{k}:{_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return repr(value) if value == "" or " " in value else value
    return str(value).replace(" ", "")


def help_text(program: str, doc: str, flag_names: Sequence[str], argv: Sequence[str]) -> str:
    """The program's docstring, its flags (from absl's registry) and the config's groups and defaults."""
    lines = [doc.strip(), "", "flags:"]
    for name in flag_names:
        flag = flags.FLAGS[name]
        default = "" if flag.default is None else f" (default {flag.default})"
        lines.append(textwrap.fill(f"{flag.help}{default}", WIDTH, initial_indent=f"  --{name:<10} ",
                                   subsequent_indent=" " * 15))  # fmt: skip
    lines.append(f"  -h, --help     this message; {program} --helpfull lists every absl flag")
    spec = _config_arg(argv)
    title = "config fields and defaults (grit_jax/run_config.py)"
    config = base_config()
    if spec:
        try:
            config, title = load_config_file(spec), f"config fields of {spec}"
        except Exception as e:  # help still helps: the defaults, and why the file did not load
            title += f"; {spec} did not load: {type(e).__name__}: {e}"
    lines += ["", f"{title}; override any with --config.GROUP.FIELD=VALUE:", *config_groups(config)]
    return "\n".join(lines)
