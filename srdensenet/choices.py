"""The names the options choose from: model variants, layouts and scales, precisions and inference backends.

They live here, apart from what gives them meaning (model.py, hardware.py's precision table, runners.py), because
this module loads without PyTorch: the configuration and every command's --help need the names, not the model.
"""

VARIANTS = ("h", "hl", "all")  # what reaches the reconstruction: the last block, + low-level features, every block
LAYOUTS = ("paper", "port")  # the paper's 3x3 deconvolutions and bottleneck ReLU / the reference port's
SCALES = (2, 3, 4, 8)
# "fp32-cl" is inference only: the fast path in fp32 (channels_last); "fp32" there is the eager reference.
TRAINING_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
INFERENCE_PRECISIONS = ("auto", "fp32", "fp32-cl", "bf16", "fp16")
BACKENDS = ("auto", "torch", "onnxruntime")
ONNX_OPSET = 17  # the default opset of the ONNX export (onnx_export.py)
