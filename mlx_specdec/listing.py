"""`specdec models`: the known pairs, their sizes, the memory each of N machines needs (N = 1, or
the `mlx.launch` group, or --machines), what is converted here, and whether speculative output was
measured exact on this device (the numerics verdicts `probe.py` cached, by bundle name)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from . import probe
from .provision import DEFAULT_CONTEXT, cache_dir, machines_here, model_rows


def _exact_here(verdict) -> str:
    if verdict is None:
        return "not checked"
    if not verdict.exact:
        return "no: plain"
    width = "" if verdict.plain_width == 1 else f", plain width {verdict.plain_width}"
    return f"yes (k <= {verdict.max_draft_tokens}{width})"


def print_models(as_json: bool = False, machines: Optional[int] = None, parallel: str = "tensor") -> None:
    """The pairs as a table (or JSON with sizes in bytes and each local bundle's cached verdict), with
    the memory each of `machines` needs (None: this process's `mlx.launch` group, 1 outside it),
    split as `parallel` says."""
    from rich.console import Console
    from rich.table import Table

    machines = machines_here() if machines is None else machines
    rows, verdicts = model_rows(machines=machines, parallel=parallel), probe.cached_verdicts()
    for r in rows:
        folders = [*r["local"].values(), *r["local_mlx"].values()]
        r["numerics"] = {Path(f).name: (v.to_json() if (v := verdicts.get(Path(f).name)) else None) for f in folders}
    if as_json:
        print(json.dumps({"cache": str(cache_dir()), "models": rows}, indent=2))
        return
    table = Table(title=f"Gemma 4 pairs (bundles in {cache_dir()})", title_justify="left")
    memory = f"memory @{DEFAULT_CONTEXT // 1024}K" + (f", each of {machines}" if machines > 1 else "")
    columns = ("name", "target", "download", "4-bit bundle", memory, "+ media", "drafter head")
    for col in (*columns, "converted", "exact here"):
        numeric = col in ("download", "4-bit bundle", "+ media") or col.startswith("memory")
        table.add_column(col, justify="right" if numeric else "left")
    sizes_shown = ("download_bytes", "bundle_bytes", "memory_bytes")
    for r in rows:
        names = list(r["numerics"])  # in the cache (the title says where)
        sizes = [f"{r[k] / 1e9:.1f} GB" if r[k] is not None else "cannot split" for k in sizes_shown]
        sizes.append(f"+{r['media_bytes'] / 1e9:.1f} GB" if r["media_bytes"] else "-")
        exact = ", ".join(_exact_here(verdicts.get(n)) for n in names) or "-"
        table.add_row(r["name"], r["target"], *sizes, r["head"], ", ".join(names) or "-", exact)
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    print(
        "drafter: <target>-assistant. `specdec chat NAME` converts on first use (an mlx-community repo: from it). "
        "exact here: `specdec check NAME` measures it. + media: the image (and audio) towers, read on the first "
        "image or clip (estimates)."
        + (
            f" Split {parallel} parallel over {machines} machines (mlx.launch); the drafter stays whole."
            if machines > 1
            else ""
        )
    )
