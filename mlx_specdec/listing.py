"""`specdec models`: the known pairs, their sizes, what is converted here, and whether speculative
output was measured exact on this device (the numerics verdicts `probe.py` cached, by bundle name)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import probe
from .provision import DEFAULT_CONTEXT, cache_dir, model_rows


def _exact_here(verdict) -> str:
    if verdict is None:
        return "not checked"
    if not verdict.exact:
        return "no: plain"
    width = "" if verdict.plain_width == 1 else f", plain width {verdict.plain_width}"
    return f"yes (k <= {verdict.max_draft_tokens}{width})"


def print_models(as_json: bool = False) -> None:
    """The pairs as a table (or JSON with sizes in bytes and each local bundle's cached verdict)."""
    from rich.console import Console
    from rich.table import Table

    rows, verdicts = model_rows(), probe.cached_verdicts()
    for r in rows:
        folders = [*r["local"].values(), *r["local_mlx"].values()]
        r["numerics"] = {Path(f).name: (v.to_json() if (v := verdicts.get(Path(f).name)) else None) for f in folders}
    if as_json:
        print(json.dumps({"cache": str(cache_dir()), "models": rows}, indent=2))
        return
    table = Table(title=f"Gemma 4 pairs (bundles in {cache_dir()})", title_justify="left")
    columns = ("name", "target", "download", "4-bit bundle", f"memory @{DEFAULT_CONTEXT // 1024}K", "drafter head")
    for col in (*columns, "converted", "exact here"):
        numeric = col in ("download", "4-bit bundle") or col.startswith("memory")
        table.add_column(col, justify="right" if numeric else "left")
    for r in rows:
        names = list(r["numerics"])  # in the cache (the title says where)
        sizes = [f"{r[k] / 1e9:.1f} GB" for k in ("download_bytes", "bundle_bytes", "memory_bytes")]
        exact = ", ".join(_exact_here(verdicts.get(n)) for n in names) or "-"
        table.add_row(r["name"], r["target"], *sizes, r["head"], ", ".join(names) or "-", exact)
    Console(width=None if sys.stdout.isatty() else 180).print(table)
    print(
        "drafter: <target>-assistant. `specdec chat NAME` converts on first use (an mlx-community repo: from it). "
        "exact here: `specdec check NAME` measures it."
    )
