"""ONNX graph rewrites for quantisation: which nodes form each group that can stay in float, and the rewrites that
make an INT8 graph fast in ONNX Runtime.

Groups are found by structure (op types, constants, what depends on the pixels), never by node names, so they work on
any SegFormer graph and after ONNX Runtime's optimisations. The float export's Gemms are written as MatMul + Add
(`unfuse_gemm`), the form the INT8 recipe quantises; GELU is fused into one node before quantisation (`fuse_gelu`);
after it, Shape nodes read the INT8 tensors (`shapes_from_quantized`) and bias additions join their INT8 products
(`fuse_bias`).

onnx is imported inside functions (the optional `onnx` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Groups of nodes that can be kept in float, found by structure (op types, initializers), not by node names.
FLOAT_GROUPS = {
    "layernorm": "LayerNormalization nodes",
    "softmax": "attention Softmax",
    "gelu": "the GELU of the Mix-FFN (fused into one Gelu node; Div, Erf, Add, Mul, Mul before that)",
    "elementwise": "residual and bias Add, Mul (the attention scale), and the other element-wise ops",
    "attention": "MatMuls of two activations: attention QK^T and AV",
    "upsampling": "the decoder's bilinear upsampling of levels 2-4 (Resize; in older exports, MatMuls with "
    "interpolation matrices built from the input size)",
    "first_conv": "the first convolution (stage 1 patch embedding, on the raw pixels)",
    "classifier": "the classifier: the last product with weights, whose output is the logits",
}
MS_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib operators (the INT8 file is for ONNX Runtime)


def node_groups(proto: Any) -> dict[str, list[str]]:
    """Names of the graph's nodes in each of `FLOAT_GROUPS`, plus "weights": Conv and MatMul nodes with a constant
    weight (what INT8 is for). Found by structure (op types, constants, what depends on the pixels), not by names,
    so it works on any SegFormer graph (and after optimisation)."""
    graph = proto.graph
    consts = _constant_tensors(graph)
    groups: dict[str, list[str]] = {name: [] for name in (*FLOAT_GROUPS, "weights")}
    producers = {o: n for n in graph.node for o in n.output}

    erf_outputs = {n.output[0] for n in graph.node if n.op_type == "Erf"}
    gelu: set[str] = set()
    for n in graph.node:  # x * 0.5 * (1 + erf(x / sqrt 2)): the Div before Erf, the Add after, the two Muls
        if n.op_type == "Erf":
            gelu.add(n.name)
            source = producers.get(n.input[0])
            if source is not None and source.op_type == "Div":
                gelu.add(source.name)
    frontier = set(erf_outputs)
    for _ in range(3):
        reached = {o for n in graph.node if n.op_type in ("Add", "Mul") and set(n.input) & frontier for o in n.output}
        gelu |= {n.name for n in graph.node if n.op_type in ("Add", "Mul") and set(n.input) & frontier}
        frontier = reached

    # Tensors that depend on the pixel values (a Shape output does not: it only knows the size).
    data = {i.name for i in graph.input}
    for n in graph.node:
        if n.op_type != "Shape" and any(i in data for i in n.input):
            data.update(n.output)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    products = [n for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm") and _weight_product(n, consts, data)]
    classifier = products[-1] if products else None  # the last product with weights makes the logits
    decoder = True  # before the classifier: a later Resize upsamples the logits (a label-map graph's postprocessing)
    for n in graph.node:
        decoder = decoder and n is not classifier
        if n.op_type == "LayerNormalization":
            groups["layernorm"].append(n.name)
        elif n.op_type == "Softmax":
            groups["softmax"].append(n.name)
        elif n.name in gelu or n.op_type == "Gelu":
            groups["gelu"].append(n.name)
        elif n.op_type in ("Add", "Mul", "Sub", "Div"):
            groups["elementwise"].append(n.name)
        elif n is classifier:
            groups["classifier"].append(n.name)
        elif n.op_type in ("MatMul", "Gemm"):
            if not any(i in data for i in n.input[:2]):
                continue  # a product of constants (folded by ONNX Runtime): nothing to quantise
            if _weight_product(n, consts, data):
                groups["weights"].append(n.name)
            else:
                groups["attention" if all(i in data for i in n.input[:2]) else "upsampling"].append(n.name)
        elif n.op_type == "Conv":
            groups["first_conv" if n is convs[0] else "weights"].append(n.name)
        elif n.op_type == "Resize" and decoder:
            groups["upsampling"].append(n.name)
    return groups


def _constant_tensors(graph: Any) -> set[str]:
    """Initializers, Constant outputs, and the outputs of nodes that read only those (weights the exporter left as
    a Slice, Flatten or scaling of a parameter, which ONNX Runtime folds when it loads the graph)."""
    consts = {t.name for t in graph.initializer}
    for n in graph.node:  # nodes are in topological order
        if all(i in consts for i in n.input if i):
            consts.update(n.output)
    return consts


def _weight_product(node: Any, consts: set[str], data: set[str]) -> bool:
    """A Conv, MatMul or Gemm of the pixel-dependent data with a constant (weight) operand."""
    a, b = node.input[0], node.input[1]
    return (a in data and b in consts) or (node.op_type == "MatMul" and a in consts and b in data)


def quantization_plan(proto: Any, keep_float: Sequence[str]) -> tuple[list[str] | None, list[str], dict[str, int]]:
    """(op types to quantise, node names to exclude, nodes kept float per group) for `quantize_static`.

    Nodes of the kept groups are excluded by name; the op types are those of the weight nodes and the other groups.
    With nothing kept, op types are None: ONNX Runtime's whole registry (Transpose, Reshape, Resize... too)."""
    groups = node_groups(proto)
    kept = {name: len(groups[name]) for name in FLOAT_GROUPS if name in keep_float}
    if not keep_float:
        return None, [], kept
    types = {n.name: n.op_type for n in proto.graph.node}
    quantized = [name for group, names in groups.items() if group not in keep_float for name in names]
    op_types = sorted({types[name] for name in quantized} | {"Conv", "MatMul"})
    exclude = [name for group in keep_float for name in groups[group]]
    return op_types, exclude, kept


def _constant(proto: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for t in proto.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.output[0] == name and n.attribute and n.attribute[0].name == "value":
            return numpy_helper.to_array(n.attribute[0].t)
    return None


def fuse_gelu(proto: Any) -> int:
    """Replace each exact GELU as torch exports it, x * 0.5 * (1 + erf(x / sqrt 2)), by one com.microsoft Gelu node.

    ONNX Runtime fuses this pattern itself in a float graph, but not once x is dequantised: it gives each consumer
    of a DequantizeLinear its own copy, and x has two (the Div and the Mul), so the pattern breaks and x is
    dequantised twice. Fused before quantisation, x has one consumer. Returns the number of GELUs fused."""
    from onnx import helper

    graph = proto.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def only(tensor: str, op: str) -> Any:
        found = consumers.get(tensor, [])
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    def close(name: str, value: float) -> bool:
        array = _constant(proto, name)
        return array is not None and array.size == 1 and abs(float(array.reshape(-1)[0]) - value) < 1e-3

    gelus: list[tuple[str, Any]] = []
    remove: set[str] = set()
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        div = producers.get(erf.input[0])
        if div is None or div.op_type != "Div" or not close(div.input[1], 2**0.5):
            continue
        x = div.input[0]
        add = only(erf.output[0], "Add")
        if add is None or not close(next((i for i in add.input if i != erf.output[0]), ""), 1.0):
            continue
        mul = only(add.output[0], "Mul")
        if mul is None or x not in mul.input:
            continue
        half = only(mul.output[0], "Mul")
        if half is None or not close(next((i for i in half.input if i != mul.output[0]), ""), 0.5):
            continue
        if len(consumers.get(div.output[0], [])) != 1:
            continue
        node = helper.make_node("Gelu", [x], [half.output[0]], name=erf.name.replace("Erf", "Gelu"), domain=MS_DOMAIN)
        gelus.append((div.output[0], node))
        remove |= {div.output[0], erf.output[0], add.output[0], mul.output[0], half.output[0]}
    if gelus:
        first = dict(gelus)
        nodes = []
        for n in graph.node:
            if n.output[0] in first:
                nodes.append(first[n.output[0]])  # where the Div was: x exists, the result is not read yet
            if n.output[0] not in remove:
                nodes.append(n)
        used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
        _replace_nodes(graph, [n for n in nodes if n.op_type != "Constant" or n.output[0] in used])
        unused = [t for t in graph.initializer if t.name not in used]  # the GELUs' constants
        for t in unused:
            graph.initializer.remove(t)
        if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(gelus)


def shapes_from_quantized(proto: Any) -> int:
    """Shape nodes that read a (De)QuantizeLinear output read its input instead (same shape): otherwise ONNX Runtime
    dequantises a whole tensor only to take its shape. Q/DQ nodes left without consumers are removed."""
    graph = proto.graph
    producers = {o: n for n in graph.node for o in n.output}
    moved = 0
    for n in graph.node:
        source = producers.get(n.input[0]) if n.op_type == "Shape" else None
        if source is not None and source.op_type in ("QuantizeLinear", "DequantizeLinear"):
            n.input[0] = source.input[0]
            moved += 1
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    _replace_nodes(graph, [n for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                           or n.output[0] in used])  # fmt: skip
    return moved


def fuse_bias(proto: Any) -> int:
    """DequantizeLinear x2 -> MatMul -> Add(bias) becomes one com.microsoft MatMulIntegerToFloat with the bias input:
    ONNX Runtime makes the same INT8 product out of the first three but adds the bias in a separate pass over the
    output. Only for constant weights whose scale is per tensor or per output column. Returns the number fused."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    weights = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    fused: dict[str, Any] = {}
    absorbed: set[str] = set()
    for n in graph.node:
        if n.op_type != "MatMul" or n.output[0] in outputs:
            continue
        a, b = (producers.get(i) for i in n.input)
        if a is None or b is None or a.op_type != "DequantizeLinear" or b.op_type != "DequantizeLinear":
            continue
        users = consumers.get(n.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add" or b.input[0] not in weights:
            continue
        add = users[0]
        bias = next((i for i in add.input if i != n.output[0]), "")
        w_shape = tuple(weights[b.input[0]].dims)
        scale = weights.get(b.input[1])
        if bias not in weights or len(w_shape) != 2 or tuple(weights[bias].dims) != (w_shape[1],) or scale is None:
            continue
        axis = next((att.i for att in b.attribute if att.name == "axis"), 1)
        if numpy_helper.to_array(scale).size > 1 and axis not in (1, -1):
            continue  # per-row scales: not what MatMulIntegerToFloat takes
        inputs = [a.input[0], b.input[0], a.input[1], b.input[1]]
        inputs += [a.input[2] if len(a.input) > 2 else "", b.input[2] if len(b.input) > 2 else "", bias]
        fused[n.output[0]] = helper.make_node(
            "MatMulIntegerToFloat", inputs, [add.output[0]], name=n.name, domain=MS_DOMAIN
        )
        absorbed.add(add.output[0])
    if fused:
        nodes = [fused.get(n.output[0], n) for n in graph.node if n.output[0] not in absorbed]
        used = {i for n in nodes for i in n.input} | outputs
        _replace_nodes(graph, [n for n in nodes if n.op_type != "DequantizeLinear" or n.output[0] in used])
        if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(fused)


def unfuse_gemm(proto: Any) -> int:
    """Each Gemm with a constant weight becomes MatMul (+ Add of its C input): the form the INT8 recipe quantises
    (the weight per output column, the bias joined back by `fuse_bias`). The float export writes Gemms because
    ONNX Runtime runs them fastest in float. Returns the number of Gemms rewritten."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    weights = {t.name: t for t in graph.initializer}
    nodes, count = [], 0
    for n in graph.node:
        att = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        plain = att.get("alpha", 1.0) == 1.0 and att.get("beta", 1.0) == 1.0 and not att.get("transA", 0)
        if n.op_type != "Gemm" or not plain or n.input[1] not in weights:
            nodes.append(n)
            continue
        weight = n.input[1]
        if att.get("transB", 0):
            array = numpy_helper.to_array(weights[weight]).T
            weight = f"{n.input[1]}_t"
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), weight))
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
        product = n.output[0] if bias is None else f"{n.output[0]}_matmul"
        nodes.append(helper.make_node("MatMul", [n.input[0], weight], [product], name=n.name))
        if bias is not None:
            nodes.append(helper.make_node("Add", [product, bias], [n.output[0]], name=f"{n.name}_bias"))
        count += 1
    if count:
        _replace_nodes(graph, nodes)
        used = {i for n in graph.node for i in n.input}
        for t in [t for t in graph.initializer if t.name not in used]:  # transposed away
            graph.initializer.remove(t)
    return count


def _replace_nodes(graph: Any, nodes: list[Any]) -> None:
    """The graph's node list becomes `nodes` (copied first: they may be the list's own elements)."""
    copies = []
    for n in nodes:
        copy = type(n)()
        copy.CopyFrom(n)
        copies.append(copy)
    del graph.node[:]
    graph.node.extend(copies)


def count_quantized(proto: Any, op_types: Sequence[str] | None, exclude: set[str]) -> int:
    """Nodes of the quantised op types that read a DequantizeLinear output (those ONNX Runtime runs on INT8)."""
    dq = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    skip = {"QuantizeLinear", "DequantizeLinear"}
    return sum(
        1
        for n in proto.graph.node
        if n.op_type == "MatMulIntegerToFloat"  # fused by fuse_bias: reads the INT8 tensors directly
        or (
            n.op_type not in skip
            and (op_types is None or n.op_type in op_types)
            and n.name not in exclude
            and set(n.input) & dq
        )
    )
