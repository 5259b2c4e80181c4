"""Collects the docstrings of the Python standard library, for the demo corpus (grit_jax.data.demo).

Run as a script by a fresh `python -I -S`, so the result depends on the Python version alone: a module
imported by the caller (torch, jax, ...) can change what a stdlib module holds. Imports nothing else.
"""

import importlib
import inspect
import json
import re
import sys
import warnings

MODULES = (
    "abc argparse ast base64 bisect calendar codecs collections configparser contextlib copy csv "
    "dataclasses datetime difflib enum filecmp fnmatch fractions functools gettext glob gzip hashlib "
    "heapq hmac html inspect ipaddress itertools json linecache locale logging math numbers operator "
    "os pathlib pprint queue random re sched secrets shlex shutil statistics string struct subprocess "
    "tarfile tempfile textwrap threading timeit tokenize traceback types typing unittest urllib.parse "
    "uuid warnings weakref zipfile zlib asyncio binascii cmd code codeop colorsys compileall "
    "concurrent.futures contextvars copyreg decimal dis doctest email.message email.utils ftplib getopt "
    "graphlib http.client http.cookies http.server imaplib importlib io mailbox mimetypes netrc "
    "optparse pdb pickle pickletools pkgutil plistlib poplib profile pstats py_compile pydoc quopri "
    "reprlib runpy selectors signal smtplib socket socketserver sqlite3 ssl stat symtable sysconfig "
    "tabnanny trace tracemalloc urllib.request wave xml.dom.minidom xml.etree.ElementTree zipapp "
    "zipimport zoneinfo "
    # more modules, and submodules whose members carry their own module's name
    "array asyncio.base_events asyncio.events asyncio.locks asyncio.protocols asyncio.queues "
    "asyncio.streams asyncio.tasks asyncio.transports bdb bz2 cmath collections.abc "
    "concurrent.futures._base email.charset email.generator email.header email.headerregistry "
    "fileinput gc http.cookiejar importlib.abc importlib.metadata json.decoder json.encoder "
    "logging.config logging.handlers lzma platform shelve site telnetlib time unittest.case "
    "unittest.loader unittest.mock unittest.result wsgiref.handlers wsgiref.headers xml.sax.handler "
    "xml.sax.saxutils xmlrpc.client xmlrpc.server"
).split()


def _signature(obj) -> str:
    try:
        # default values like <object object at 0x7f...> would change from run to run, and one default
        # (platform.architecture's executable) is the interpreter's path, which differs per clone
        text = re.sub(r" at 0x[0-9a-f]+>", ">", str(inspect.signature(obj)))
        return text.replace(repr(sys.executable), "sys.executable")
    except Exception:
        return "(...)"


def _documented(name: str, obj):
    """(name, signature, summary, rest) when the docstring has a summary and a body, else None."""
    doc = inspect.getdoc(obj)
    if not doc or obj.__doc__ is None:
        return None
    summary, _, rest = doc.partition("\n\n")
    summary, rest = " ".join(summary.split()), rest.strip()
    if not 10 <= len(summary) <= 300 or len(rest) < 40:
        return None
    return name, _signature(obj), summary.strip(), rest


def collect() -> dict:
    """{'functions' | 'classes': [(module, name, signature, summary, rest)], 'modules': [(module, doc)]}."""
    with warnings.catch_warnings():  # deprecated aliases (typing.io, ...) warn when touched
        warnings.simplefilter("ignore")
        found = _collect_entries()
    found["modules"] = [
        (m, inspect.getdoc(sys.modules[m]))
        for m in MODULES
        if m in sys.modules and inspect.getdoc(sys.modules[m])
    ]
    return found


def _collect_entries() -> dict[str, list[tuple[str, str, str, str, str]]]:
    found = {"functions": [], "classes": []}
    seen = set()  # a docstring shared by several members is kept once, at its first
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for attr in sorted(vars(module)):
            obj = getattr(module, attr)
            if attr.startswith("_") or getattr(obj, "__module__", None) not in (
                module_name,
                "_" + module_name,
            ):
                continue
            members = []
            if inspect.isclass(obj):
                members.append(("classes", f"{module_name}.{attr}", obj))
                members += [
                    ("classes", f"{module_name}.{attr}.{m}", getattr(obj, m))
                    for m in sorted(vars(obj))
                    if not m.startswith("_") and callable(getattr(obj, m, None))
                ]
            elif callable(obj):
                members.append(("functions", f"{module_name}.{attr}", obj))
            for kind, name, member in members:
                entry = _documented(name, member)
                if entry and entry[3] not in seen:
                    seen.add(entry[3])
                    found[kind].append((module_name, *entry))
    return found


if __name__ == "__main__":
    json.dump(collect(), sys.stdout)
