"""Output of the inspect commands: the JSON documents of docs/inspect-json.md, and tables.

The JSON builders are the stable interface (each document names its ``schema``; fields are
only ever added). Tables use ``rich``: colour on a terminal, plain text otherwise (wide
enough that a pipe or a file gets whole lines, not wrapped cells).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from fsnap.inspect.changes import Change, LayerChanges
from fsnap.inspect.layers import ImageLayers
from fsnap.inspect.usage import DirUsage, LayerUsage, TreeRow
from fsnap.inspect.waste import Analysis, Verdict
from fsnap.inspect.which import Sighting, Which
from fsnap.progress import human_size

MARK_STYLES = {"added": "green", "modified": "yellow", "removed": "red"}


class _Console(Console):
    """rich's Console, but a closed pipe reaches ``fsnap.cli.guarded`` like any other
    write's would (rich itself exits 1), so every command stops with the SIGPIPE status."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


def console() -> Console:
    if sys.stdout.isatty():
        return _Console(highlight=False)
    return _Console(width=1000, no_color=True, highlight=False, color_system=None)


def print_json(doc: dict[str, Any]) -> None:
    """Indented for a person at a terminal; compact into a pipe, where Python's C encoder
    writes a 10,000-entry diff several times faster than the indenting one."""
    if sys.stdout.isatty():
        print(json.dumps(doc, indent=2))
    else:
        print(json.dumps(doc, separators=(",", ":")))


def short(digest: str, no_trunc: bool) -> str:
    return digest if no_trunc else digest.split(":", 1)[-1][:12]


def _print(out: Console, table: Table) -> None:
    """The title on a line of its own (rich would pad it to the console's width)."""
    if table.title:
        out.print(f"[bold]{table.title}[/bold]")
        table.title = None
    out.print(table)


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title or None, title_justify="left", header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=column not in ("CREATED BY", "PATH"))
    return table


# --- inspect / history -------------------------------------------------------------------


def inspect_json(image: ImageLayers, sizes: Sequence[tuple[int, int] | None]) -> dict[str, Any]:
    """``sizes[i]``: (content bytes, entries) of layer i from its index, None if not unpacked."""
    layers = []
    for info in image.layers:
        found = sizes[info.index]
        history = info.history
        layers.append(
            {
                "index": info.index,
                "digest": info.descriptor.digest,
                "media_type": info.descriptor.media_type,
                "size": info.descriptor.size,
                "diff_id": info.diff_id,
                "chain_id": info.chain_id,
                "unpacked_size": None if found is None else found[0],
                "entries": None if found is None else found[1],
                "created_by": history.created_by if history else "",
                "created": history.created if history else "",
            }
        )
    unpacked = all(s is not None for s in sizes)
    return {
        "schema": "fsnap/inspect/v1",
        "name": image.name,
        "target": image.target.to_json(),
        "index": None if image.index is None else image.index.digest,
        "manifest": image.manifest.to_json(),
        "config": image.config.to_json(),
        "platform": str(image.platform),
        "runtime": image.runtime,
        "unpacked": unpacked,
        "layers": layers,
        "totals": {
            "layers": len(layers),
            "size": sum(layer["size"] for layer in layers),
            "unpacked_size": sum(s[0] for s in sizes if s) if unpacked else None,
        },
    }


def inspect_table(doc: dict[str, Any], no_trunc: bool) -> None:
    out = console()
    out.print(f"[bold]{doc['name']}[/bold]  {doc['platform']}")
    for key in ("index", "manifest", "config"):
        value = doc[key]
        if value is not None:
            digest = value if isinstance(value, str) else value["digest"]
            out.print(f"  {key:9} {digest}")
    for key, value in doc["runtime"].items():
        out.print(f"  {key:9} {json.dumps(value)}")
    table = _table(
        "layers",
        "#",
        "DIGEST",
        "DIFF ID",
        "CHAIN ID",
        "SIZE",
        "UNPACKED",
        "MEDIA TYPE",
        "CREATED BY",
    )
    for layer in doc["layers"]:
        unpacked = layer["unpacked_size"]
        table.add_row(
            str(layer["index"]),
            short(layer["digest"], no_trunc),
            short(layer["diff_id"], no_trunc),
            short(layer["chain_id"], no_trunc),
            human_size(layer["size"]),
            "-" if unpacked is None else human_size(unpacked),
            layer["media_type"].rsplit(".", 1)[-1],
            layer["created_by"],
        )
    totals = doc["totals"]
    unpacked_total = totals["unpacked_size"]
    table.add_section()
    table.add_row(
        "",
        f"{totals['layers']} layers",
        "",
        "",
        human_size(totals["size"]),
        "-" if unpacked_total is None else human_size(unpacked_total),
        "",
        "",
    )
    _print(out, table)
    if not doc["unpacked"]:
        out.print(f"[yellow]not unpacked: run `fsnap pull {doc['name']}`[/yellow]")


def history_json(image: ImageLayers) -> dict[str, Any]:
    lines = []
    for line in reversed(image.history):
        layer = (
            None
            if line.layer is None or line.layer >= len(image.layers)
            else image.layers[line.layer]
        )
        lines.append(
            {
                "created": line.created,
                "created_by": line.created_by,
                "comment": line.comment,
                "empty_layer": line.empty_layer,
                "layer": line.layer,
                "size": layer.descriptor.size if layer else 0,
                "digest": layer.descriptor.digest if layer else None,
                "chain_id": layer.chain_id if layer else None,
            }
        )
    return {"schema": "fsnap/history/v1", "name": image.name, "history": lines}


def history_table(doc: dict[str, Any], no_trunc: bool) -> None:
    table = _table(
        f"history of {doc['name']} (newest first)",
        "LAYER",
        "CREATED",
        "CREATED BY",
        "SIZE",
        "COMMENT",
    )
    for line in doc["history"]:
        layer = "<empty>" if line["layer"] is None else str(line["layer"])
        created_by = (
            line["created_by"]
            if no_trunc or len(line["created_by"]) < 60
            else line["created_by"][:57] + "..."
        )
        table.add_row(layer, line["created"], created_by, human_size(line["size"]), line["comment"])
    _print(console(), table)


# --- diff ------------------------------------------------------------------------------------


def change_json(change: Change) -> dict[str, Any]:
    return {
        "path": change.path,
        "mark": change.mark,
        "kind": change.kind,
        "size": change.size,
        "entries": change.entries,
        "cause": change.cause,
        "opaque": change.opaque,
        "lower_layer": change.lower_layer,
        "lower_size": change.lower_size,
    }


def diff_json(
    source: dict[str, Any], path: str, groups: list[LayerChanges], names: list[str]
) -> dict[str, Any]:
    return {
        "schema": "fsnap/diff/v1",
        "source": source,
        "path": path,
        "layers": [
            {
                "first": group.first,
                "last": group.last,
                "chain_id": names[group.last],
                "changes": [change_json(c) for c in group.changes],
                "totals": {
                    mark: {"count": group.count(mark), "bytes": group.bytes(mark)}
                    for mark in ("added", "modified", "removed")
                },
            }
            for group in groups
        ],
    }


def diff_table(doc: dict[str, Any]) -> None:
    out = console()
    for group in doc["layers"]:
        span = (
            str(group["first"])
            if group["first"] == group["last"]
            else f"{group['first']}..{group['last']}"
        )
        out.print(f"[bold]layer {span}[/bold] ({group['chain_id']})")
        table = _table("", "MARK", "SIZE", "KIND", "PATH", "NOTE")
        for change in group["changes"]:
            style = MARK_STYLES[change["mark"]]
            table.add_row(
                f"[{style}]{change['mark']}[/{style}]",
                human_size(change["size"]),
                change["kind"],
                f"[{style}]{change['path']}[/{style}]",
                _note(change),
            )
        _print(out, table)
        totals = group["totals"]
        out.print(
            "  "
            + ", ".join(
                f"{t['count']} {mark} ({human_size(t['bytes'])})" for mark, t in totals.items()
            )
        )


def _note(change: dict[str, Any]) -> str:
    notes = []
    if change["cause"]:
        notes.append(f"by {change['cause']}")
    if change["mark"] == "removed" and change["entries"] > 1:
        notes.append(f"{change['entries']} entries")
    if change["opaque"]:
        notes.append("opaque")
    if change["lower_layer"] is not None:
        notes.append(f"was layer {change['lower_layer']}")
    return ", ".join(notes)


# --- analyze ---------------------------------------------------------------------------------


def analyze_json(
    name: str, names: list[str], analysis: Analysis, top: int, verdicts: list[Verdict] | None
) -> dict[str, Any]:
    return {
        "schema": "fsnap/analyze/v1",
        "name": name,
        "efficiency": analysis.efficiency,
        "wasted_bytes": analysis.wasted_bytes,
        "user_wasted_percent": analysis.user_wasted_percent,
        "total_bytes": analysis.total_bytes,
        "visible_bytes": analysis.visible_bytes,
        "user_bytes": analysis.user_bytes,
        "layers": [
            {"index": i, "chain_id": names[i], "bytes": size}
            for i, size in enumerate(analysis.layer_bytes)
        ],
        "offenders": [
            {
                "path": o.path,
                "wasted": o.wasted,
                "versions": [
                    {"layer": v.layer, "size": v.size, "visible": v.visible} for v in o.versions
                ],
            }
            for o in analysis.offenders[:top]
        ],
        "ci": None
        if verdicts is None
        else {
            "passed": all(v.passed for v in verdicts),
            "rules": [
                {"rule": v.rule, "limit": v.limit, "value": v.value, "passed": v.passed}
                for v in verdicts
            ],
        },
    }


def analyze_table(doc: dict[str, Any]) -> None:
    out = console()
    out.print(f"[bold]{doc['name']}[/bold]")
    out.print(f"  efficiency:          {doc['efficiency'] * 100:.2f} %")
    out.print(f"  wasted bytes:        {doc['wasted_bytes']} ({human_size(doc['wasted_bytes'])})")
    out.print(f"  user wasted percent: {doc['user_wasted_percent'] * 100:.2f} %")
    out.print(f"  content bytes:       {doc['total_bytes']} stored, {doc['visible_bytes']} visible")
    if doc["offenders"]:
        table = _table("top offenders", "WASTED", "COUNT", "LAYERS", "PATH")
        for offender in doc["offenders"]:
            layers = ",".join(
                str(v["layer"]) + ("" if v["visible"] else "*") for v in offender["versions"]
            )
            table.add_row(
                human_size(offender["wasted"]),
                str(len(offender["versions"])),
                layers,
                offender["path"],
            )
        _print(out, table)
        out.print("  (* a version the merged view does not show)")
    ci = doc["ci"]
    if ci is not None:
        for rule in ci["rules"]:
            verdict = "[green]PASS[/green]" if rule["passed"] else "[red]FAIL[/red]"
            out.print(
                f"  {verdict} {rule['rule']}: {rule['value']:.4g} (limit {rule['limit']:.4g})"
            )
        out.print("[green]result: PASS[/green]" if ci["passed"] else "[red]result: FAIL[/red]")


# --- which / tree / du -----------------------------------------------------------------------


def sighting_json(s: Sighting, names: list[str]) -> dict[str, Any]:
    return {
        "layer": s.layer,
        "chain_id": names[s.layer],
        "action": s.action,
        "kind": s.kind,
        "size": s.size,
        "cause": s.cause,
        "by": s.by,
    }


def which_json(name: str, names: list[str], answer: Which) -> dict[str, Any]:
    provider = answer.provider
    return {
        "schema": "fsnap/which/v1",
        "name": name,
        "path": answer.path,
        "present": answer.present,
        "provider": None if provider is None else {"layer": provider, "chain_id": names[provider]},
        "kind": answer.kind,
        "sightings": [sighting_json(s, names) for s in answer.sightings],
        "shadowed": [{"layer": i, "chain_id": names[i]} for i in answer.shadowed],
        "hidden_by": None if answer.hidden_by is None else sighting_json(answer.hidden_by, names),
    }


def which_table(doc: dict[str, Any], no_trunc: bool) -> None:
    out = console()
    if doc["present"]:
        provider = doc["provider"]
        out.print(
            f"{doc['path']}: {doc['kind']} from layer {provider['layer']} "
            f"({short(provider['chain_id'], no_trunc)})"
        )
        if doc["shadowed"]:
            out.print("  shadows layers " + ", ".join(str(s["layer"]) for s in doc["shadowed"]))
    elif doc["hidden_by"] is not None:
        hidden = doc["hidden_by"]
        out.print(
            f"{doc['path']}: [red]removed[/red] in layer {hidden['layer']} by "
            f"{hidden['cause']} of {hidden['by']}"
        )
    else:
        out.print(f"{doc['path']}: not in any layer")
    if doc["sightings"]:
        table = _table("layers", "LAYER", "CHAIN ID", "ACTION", "KIND", "SIZE", "BY")
        for s in doc["sightings"]:
            style = MARK_STYLES[s["action"]]
            by = f"{s['cause']} of {s['by']}" if s["cause"] else ""
            table.add_row(
                str(s["layer"]),
                short(s["chain_id"], no_trunc),
                f"[{style}]{s['action']}[/{style}]",
                s["kind"],
                human_size(s["size"]),
                by,
            )
        _print(out, table)


def tree_json(
    name: str,
    names: list[str],
    path: str,
    layer: int | None,
    depth: int | None,
    rows: list[TreeRow],
) -> dict[str, Any]:
    return {
        "schema": "fsnap/tree/v1",
        "name": name,
        "path": path,
        "layer": layer,
        "depth": depth,
        "entries": [
            {
                "path": r.path,
                "depth": r.depth,
                "kind": r.kind,
                "size": r.size,
                "layer": r.layer,
                "chain_id": names[r.layer] if r.layer >= 0 else None,
                "link": r.link,
                "mark": r.mark,
            }
            for r in rows
        ],
    }


def tree_text(doc: dict[str, Any], no_trunc: bool) -> None:
    out = console()
    for entry in doc["entries"]:
        name = entry["path"].rsplit("/", 1)[-1] or "/"
        if entry["kind"] == "dir":
            name = f"[bold blue]{name}[/bold blue]"
        if entry["link"]:
            name += f" -> {entry['link']}"
        if entry["mark"]:
            name += f" [red]({entry['mark']})[/red]"
        size = f" {human_size(entry['size'])}" if entry["kind"] in ("file", "hardlink") else ""
        chain = short(entry["chain_id"], no_trunc) if entry["chain_id"] else "-"
        out.print(f"[dim]{entry['layer']:>3} {chain}[/dim] {'  ' * entry['depth']}{name}{size}")


def du_json(
    name: str, path: str, depth: int, dirs: list[DirUsage], layers: list[LayerUsage]
) -> dict[str, Any]:
    return {
        "schema": "fsnap/du/v1",
        "name": name,
        "path": path,
        "depth": depth,
        "directories": [
            {"path": d.path, "depth": d.depth, "size": d.size, "entries": d.entries} for d in dirs
        ],
        "layers": [
            {"layer": u.layer, "chain_id": u.chain_id, "stored": u.stored, "visible": u.visible}
            for u in layers
        ],
    }


def du_table(doc: dict[str, Any], no_trunc: bool) -> None:
    out = console()
    table = _table(f"merged view under {doc['path']}", "SIZE", "BYTES", "ENTRIES", "PATH")
    for d in doc["directories"]:
        table.add_row(human_size(d["size"]), str(d["size"]), str(d["entries"]), d["path"])
    _print(out, table)
    table = _table("per layer", "LAYER", "CHAIN ID", "STORED", "VISIBLE", "HIDDEN")
    for u in doc["layers"]:
        table.add_row(
            str(u["layer"]),
            short(u["chain_id"], no_trunc),
            human_size(u["stored"]),
            human_size(u["visible"]),
            human_size(u["stored"] - u["visible"]),
        )
    _print(out, table)
