"""What a search leaves in its output folder: ``genotype.json``, ``alphas.json`` and ``architecture.svg``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from effpose.genotype import Genotype, parse_op, save_genotype
from effpose.search.cost import CostTable
from effpose.search.supernet import SuperNet

#: box colour per depthwise kernel size; ``None`` is ``skip``
KERNEL_COLOURS: dict[int | None, str] = {3: "#9ecae1", 5: "#4292c6", 7: "#08519c", None: "#e0e0e0"}
_BOX_WIDTH, _BOX_HEIGHT, _GAP, _LABEL_WIDTH, _ROW_HEIGHT, _TOP = 64, 40, 6, 124, 52, 40


def alpha_summary(model: SuperNet, table: CostTable) -> dict[str, Any]:
    """softmax(alpha) of every layer, the argmax op, and the expected and derived costs."""
    layers = [{"index": layer.layer.index, "stage": layer.layer.stage, "position": layer.layer.position,
               "probabilities": dict(zip(layer.candidates, layer.probabilities().detach().cpu().tolist())),
               "argmax": argmax}
              for layer, argmax in zip(model.mixed_layers, model.argmax_ops())]
    return {"metric": table.metric, "expected_cost": float(model.expected_cost(table).detach()),
            "derived_cost": table.genotype_cost(model.derive("derived")), "layers": layers}


def architecture_svg(genotype: Genotype) -> str:
    """A small picture of ``genotype``: one row per stage, one box per layer coloured by kernel size."""
    longest = max(len(stage.ops) for stage in genotype.stages)
    width = _LABEL_WIDTH + longest * (_BOX_WIDTH + _GAP) + _GAP
    height = _TOP + len(genotype.stages) * _ROW_HEIGHT + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f'<text x="{_GAP}" y="20" font-size="14" font-weight="bold">{escape(genotype.name)} '
             f'(stem {genotype.stem_channels} channels)</text>']
    for row, stage in enumerate(genotype.stages):
        y = _TOP + row * _ROW_HEIGHT
        parts.append(f'<text x="{_GAP}" y="{y + _BOX_HEIGHT // 2 + 4}">stage {row}: {stage.channels} ch, '
                     f's{stage.stride}</text>')
        for position, op in enumerate(stage.ops):
            spec = parse_op(op)
            kernel = spec.kernel if spec is not None else None
            label = op if spec is None else f"k{spec.kernel} e{spec.expansion}"
            x = _LABEL_WIDTH + position * (_BOX_WIDTH + _GAP)
            text_colour = "#ffffff" if kernel == 7 else "#000000"
            stride = f" s{stage.stride}" if position == 0 else ""
            parts.append(f'<g class="layer" data-op="{escape(op)}"><title>{escape(op)}, {stage.channels} channels'
                         f'{stride}</title><rect x="{x}" y="{y}" width="{_BOX_WIDTH}" height="{_BOX_HEIGHT}" rx="4" '
                         f'fill="{KERNEL_COLOURS.get(kernel, "#fdae6b")}" stroke="#333333"/>'
                         f'<text x="{x + _BOX_WIDTH // 2}" y="{y + 17}" text-anchor="middle" fill="{text_colour}">'
                         f'{escape(label)}</text><text x="{x + _BOX_WIDTH // 2}" y="{y + 31}" text-anchor="middle" '
                         f'fill="{text_colour}" font-size="9">{stage.channels}{stride}</text></g>')
    legend_y = _TOP + len(genotype.stages) * _ROW_HEIGHT + 10
    for index, (kernel, colour) in enumerate(KERNEL_COLOURS.items()):
        x = _GAP + index * 90
        parts.append(f'<rect x="{x}" y="{legend_y}" width="14" height="14" fill="{colour}" stroke="#333333"/>'
                     f'<text x="{x + 20}" y="{legend_y + 11}">{"skip" if kernel is None else f"{kernel}x{kernel}"}'
                     '</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_search_outputs(model: SuperNet, table: CostTable, out_dir: str | Path, name: str) -> Genotype:
    """Write the derived ``genotype.json`` (named ``name``), ``alphas.json`` and ``architecture.svg``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    genotype = model.derive(name)
    save_genotype(genotype, out_dir / "genotype.json")
    (out_dir / "alphas.json").write_text(json.dumps(alpha_summary(model, table), indent=2) + "\n")
    (out_dir / "architecture.svg").write_text(architecture_svg(genotype))
    return genotype
