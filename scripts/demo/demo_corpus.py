"""The demo pair's corpus: Python's own documentation, present in every installation.

Shared by `train_demo_pair.py` (training, needs torch) and `measure_demo_pair.py` (MLX only), so
both see the same held-out entries: `split_corpus(stdlib_entries())`, a split by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import io
import sys
import warnings

SKIP_MODULES = {  # GUI, interactive, platform-specific or noisy on import
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "pydoc",
    "test",
    "lib2to3",
    "ensurepip",
    "venv",
    "msvcrt",
    "winreg",
    "winsound",
    "nt",
    "pty",
    "tty",
    "curses",
}
CHAT_QUESTIONS = ["What does `{}` do?", "Explain `{}`.", "Tell me about {}.", "How do I use {}?"]


def stdlib_entries() -> list[tuple[str, str]]:
    """(name, documentation) pairs: stdlib docstrings and pydoc topics, in a fixed order."""
    import pkgutil
    import pydoc_data.topics

    names = []
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in SKIP_MODULES:
            continue
        names.append(name)
        try:
            spec = importlib.util.find_spec(name)
        except Exception:
            continue
        if spec is not None and spec.submodule_search_locations:
            for sub in pkgutil.iter_modules(spec.submodule_search_locations, name + "."):
                if not any(part.startswith("_") or part in SKIP_MODULES for part in sub.name.split(".")):
                    names.append(sub.name)

    entries: dict[str, str] = {}  # doc -> name, first name wins (inherited docstrings repeat)

    def add(obj, qualname: str) -> None:
        doc = inspect.getdoc(obj)
        if doc and len(doc) >= 60 and doc not in entries:
            entries[doc] = qualname

    for name in names:
        try:
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - a module that fails to import is just skipped
            continue
        add(module, name)
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
                add(obj, f"{name}.{attr}")
            if inspect.isclass(obj):
                for meth, member in sorted(vars(obj).items()):
                    if not meth.startswith("_") and (inspect.isfunction(member) or inspect.ismethoddescriptor(member)):
                        add(member, f"{name}.{attr}.{meth}")
    pairs = [(qualname, doc) for doc, qualname in entries.items()]
    pairs += [(f"the '{key}' topic", text.strip()) for key, text in sorted(pydoc_data.topics.topics.items())]
    return pairs


def chat_answer(doc: str, max_chars: int = 700) -> str:
    """The opening paragraphs of a docstring, cut at a paragraph boundary near max_chars."""
    answer = ""
    for para in doc.split("\n\n"):
        if answer and len(answer) + len(para) > max_chars:
            break
        answer = f"{answer}\n\n{para}" if answer else para
    return answer[: max_chars * 2]


def is_held_out(name: str, holdout: float = 0.05) -> bool:
    """A stable split by name: the same entries are held out whatever else the corpus holds
    (the stdlib entry list varies slightly with what the interpreter has imported)."""
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % 10_000 < holdout * 10_000


def split_corpus(pairs, holdout: float = 0.05):
    """(train, held-out) lists of (name, doc) pairs."""
    train = [p for p in pairs if not is_held_out(p[0], holdout)]
    held = [p for p in pairs if is_held_out(p[0], holdout)]
    return train, held
