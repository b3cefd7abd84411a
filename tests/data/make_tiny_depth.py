"""Writes tests/data/tiny_depth.onnx: a stand-in for a depth preprocessor model (MiDaS / Depth Anything ONNX
layout: one 1x3xHxW float input normalized with ImageNet's mean and std, one 1xHxW output, larger = nearer) whose
"depth" is the mean of the normalized channels, so a test knows what the studio's depth preprocessor must make of it.
Needs the `onnx` package (not a studio dependency): `pip install --target /tmp/onnxlib onnx protobuf ml_dtypes`,
then `PYTHONPATH=/tmp/onnxlib python tests/data/make_tiny_depth.py`."""

from pathlib import Path

import onnx
from onnx import TensorProto, helper

x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])
y = helper.make_tensor_value_info("depth", TensorProto.FLOAT, ["N", "H", "W"])
axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
node = helper.make_node("ReduceMean", ["image", "axes"], ["depth"], keepdims=0)
graph = helper.make_graph([node], "tiny_depth", [x], [y], initializer=[axes])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, Path(__file__).with_name("tiny_depth.onnx"))
