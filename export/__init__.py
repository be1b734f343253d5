"""The export stage: reference models, demo training, ONNX, FP16, INT8 (Q/DQ), accuracy gate, signed bundles.

Never imported by the running appliance; the CLI imports its modules lazily. The
submodules are imported explicitly (``from export.pipeline import ...``) so that
``import export`` stays free of torch.
"""

__all__: list[str] = [
    "checkpoint", "demo", "encoder", "errors", "fp16", "gate", "int8", "models", "onnx_export", "pipeline", "qdq_rules",
    "tensorrt_build", "train", "triton_repo",
]
