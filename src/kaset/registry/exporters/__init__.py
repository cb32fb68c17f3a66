"""Exporters: PyTorch model families turned into ONNX, run only inside the export environment.

These modules are never imported by the server. `kaset.registry.export` runs `_runner.py`
with the export venv's Python (torch, the model's packages); the runner verifies the source
weights and calls `module:function` from the catalog entry's `export.exporter` with an
`ExportJob`. An exporter writes its outputs (`model.onnx`, `labels.json`) into `job.staging`
plus `reference.npz` (torch's outputs on sample inputs, see `_common.write_reference`), and
returns facts for the model card. Only the standard library may be imported at module level:
torch and the model packages are imported inside the functions.
"""
