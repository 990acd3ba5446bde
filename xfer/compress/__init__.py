"""After fine-tuning: smaller and faster variants of a run (ONNX export, int8, structured pruning, distillation).

Every variant is written as a run folder of its own (checksummed, with spec and metrics), so `xfer eval` and
`xfer predict` read it like any run.
"""
