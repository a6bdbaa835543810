"""ONNX graph clean-up after export, so mobile execution providers take the whole graph.

1. onnxruntime's *basic* optimisations (provider-independent: constant folding, redundant node
   removal) fold the subgraphs the TorchScript exporter emits for constant pads.
2. `fold_pads_into_convs`: a constant zero Pad feeding only a Conv becomes the Conv's own
   (asymmetric) `pads` attribute. CoreML's execution provider does not take Pad.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def basic_optimize(src: Path, dst: Path) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def fold_pads_into_convs(path: Path) -> int:
    """Rewrite `path` in place; returns how many Pad nodes were folded."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded = []
    for pad in graph.node:
        if pad.op_type != "Pad" or len(consumers.get(pad.output[0], [])) != 1:
            continue
        conv = consumers[pad.output[0]][0]
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        pads = inits.get(pad.input[1]) if len(pad.input) > 1 else None
        value = inits.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
        if conv.op_type != "Conv" or mode != b"constant" or pads is None or value is None or np.any(value != 0):
            continue
        pads = [int(p) for p in pads]
        if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)):  # only spatial padding folds
            continue
        existing = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        merged = [existing[0] + pads[2], existing[1] + pads[3], existing[2] + pads[6], existing[3] + pads[7]]
        kept = [a for a in conv.attribute if a.name not in ("pads", "auto_pad")]
        del conv.attribute[:]
        conv.attribute.extend(kept + [helper.make_attribute("pads", merged)])
        conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    used = {name for node in graph.node for name in node.input}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)
    onnx.save(model, str(path))
    return len(folded)
