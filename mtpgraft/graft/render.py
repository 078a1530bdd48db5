"""The human-readable graft plan that `--dry-run` prints."""

from __future__ import annotations

from ..gguf_io import shown
from .types import GraftPlan


def describe_plan(plan: GraftPlan) -> str:
    """The human-readable plan (`--dry-run`)."""
    lines = [f"{plan.operation}: {plan.base}" + (f" + MTP from {plan.source}" if plan.source else "")]
    lines.append(f"  output: {', '.join(plan.outputs)} ({plan.output_bytes / 1e6:.1f} MB of tensors)")
    lines.append(f"  architecture {plan.arch}, trunk {plan.trunk_layers} layers, MTP "
                 f"{', '.join(f'blk.{i}' for i in plan.mtp_layers)}" + (f", type policy {plan.mtp_type}" if plan.mtp_type else ""))
    if plan.tensors:
        lines.append("  tensors:")
        for a in plan.tensors:
            if a.method == "drop":
                lines.append(f"    drop     {shown(a.source_name):<40} {a.from_type:<7} {a.bytes_in:>12,} B")
            else:  # names from files: shown() keeps each on its line
                name = shown(a.source_name) if a.name == a.source_name else f"{shown(a.source_name)} -> {shown(a.name)}"
                conv = a.from_type if a.from_type == a.to_type else f"{a.from_type} -> {a.to_type}"
                lines.append(f"    {a.method:<8} {name:<44} {conv:<16} {a.bytes_out:>12,} B")
    if plan.key_changes:
        lines.append("  keys:")
        for c in plan.key_changes:
            lines.append(f"    {shown(c.key)}: {c.old!r} -> {c.new!r}")
    for w in plan.warnings:
        lines.append(f"  warning: {w}")
    return "\n".join(lines)
