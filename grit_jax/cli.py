"""What every command shares: one-line errors with their exit status, and the ``--config`` flag.

``grit-train`` and ``grit-aot`` take ``--config FILE.py[:ARG]`` and ``--config.a.b=value`` overrides
(ml_collections, locked after parsing); any mistake on the command line ends as one line that names
it, with exit status 2. ``grit-data`` and ``grit-convert`` use argparse and ``run_command``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable

from absl import app, flags
from ml_collections import config_flags

from grit_jax import program_help
from grit_jax.errors import GritError, UsageError, one_line


def report(program: str, error: BaseException, status: int | None = None) -> int:
    """Prints the error as one line on stderr; returns the exit status (the error's, unless given)."""
    print(f"{program}: {getattr(error, 'label', 'error')}: {one_line(error)}", file=sys.stderr, flush=True)
    return status if status is not None else getattr(error, "exit_status", 1)


def run_command(program: str, main: Callable[[], int | None], error_status: int | None = None) -> int:
    """Runs ``main``; a GritError, or a file the system could not open, ends as one line, not a traceback.
    ``error_status`` replaces the errors' own exit status (grit-aot keeps 1 for "does not fit")."""
    try:
        return main() or 0
    except (GritError, OSError) as e:
        return report(program, e, error_status)
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr, flush=True)
        return 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes end as one line `program: error: ...` (exit 2), without the usage block."""

    def error(self, message):
        sys.exit(report(self.prog.split()[0], UsageError(f"{message} (see {self.prog} --help)")))


_CONFIG_FLAG = []


def define_config_flag():
    """The ``--config`` flag; one definition shared by every program imported into a process (tests)."""
    if not _CONFIG_FLAG:
        _CONFIG_FLAG.append(
            config_flags.DEFINE_config_file(
                "config", None, "a configs/*.py file, optionally file.py:ARG", lock_config=True
            )
        )
    return _CONFIG_FLAG[0]


def flags_parser(program: str, doc: str = "", own_flags: tuple[str, ...] = ("config",)):
    """absl's parser for ``app.run``, with every mistake on the command line reported as one line, and
    ``--help``/``-h`` answered with the program's own flags and the config's fields (exit 0)."""

    def parse(argv):
        if program_help.wants_help(argv):
            print(program_help.help_text(program, doc, own_flags, argv), flush=True)
            sys.exit(0)
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:  # an unknown flag, a value of the wrong type, a config file that raised
            _exit(program, UsageError(_flag_error(e)))
        except (AttributeError, KeyError) as e:  # --config.a.b=value where the config has no field a.b
            _exit(program, UsageError(_unknown_field(e, argv)))
        except OSError as e:  # the config file is missing or failed to import (overrides need it loaded)
            _exit(program, UsageError(_config_load_error(e)))
        except Exception as e:  # the config file's own code raised (ml_collections wraps ValueError only)
            _exit(program, UsageError(f"--config: {type(e).__name__}: {one_line(e)}"))

    return parse


def run_absl(main, argv, parser) -> None:
    """``app.run`` on ``argv`` (program name first; None: sys.argv). ml_collections reads the
    ``--config.a.b`` overrides from sys.argv, so an in-process run with its own argv sets it meanwhile."""
    saved = sys.argv
    sys.argv = list(saved if argv is None else argv)
    try:
        app.run(main, argv=sys.argv, flags_parser=parser)
    finally:
        sys.argv = saved


def _flag_error(e: Exception) -> str:
    """absl's first line, and where a config file's get_config raised (its traceback is in the message,
    the first line says only "Error whilst parsing config file:") the exception's own line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if len(lines) > 1 and "Traceback (most recent call last):" in lines:
        reason = re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1])
        flag = re.match(r"flag (--[\w.]+)=(\S*):", lines[0])
        if flag is None or flag.group(2) in reason:  # the reason names the file already
            return f"{flag.group(1) if flag else '--config'}: {reason}"
        return f"{flag.group(1)}={flag.group(2)}: {reason}"
    return lines[0]


def _unknown_field(e: Exception, argv) -> str:
    """`--config.a.b: the config has no field 'b'; did you mean 'c'?` from ml_collections' KeyError, whose
    message (its first argument) is the quoted name and, on a second line, a suggestion."""
    message = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    message = message.replace("\\n", "\n").replace("\\'", "'")  # config_flags re-wraps it escaped
    name = message.splitlines()[0].strip().strip("'\"\\") if message.strip() else type(e).__name__
    suggestion = re.search(r'Did you mean "([^"]+)"', message)
    bad = [
        a.split("=")[0]
        for a in argv[1:]
        if a.startswith("--config.") and name in a.split("=")[0][len("--config.") :].split(".")
    ]
    hint = f"did you mean {suggestion.group(1)!r}? " if suggestion else ""
    return (
        f"{bad[0] if bad else name}: the config has no field {name!r}; {hint}"
        "grit_jax/run_config.py lists the fields (or --help)"
    )


def _exit(program: str, error: GritError):
    sys.exit(report(program, error))


def _config_load_error(e: Exception) -> str:
    detail = " ".join(str(e.__cause__ or e).split()).replace("Failed loading config file config_config ", "")
    return f"--config: cannot load the config file ({detail})"


def load_config(config_flag, example: str):
    """The parsed config, or a UsageError saying why the config file could not be loaded."""
    if config_flag.value is None:
        raise UsageError(f"--config is required, e.g. --config {example}")
    try:
        config_flag.value.get("num_steps")
    except Exception as e:  # the config file is missing or raised: config_flags defers its error to here
        raise UsageError(_config_load_error(e)) from None
    return config_flag.value


def reject_extra_arguments(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}; overrides look like --config.a.b=value")
