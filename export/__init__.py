"""edge_irst.export: PyTorch weights -> verified ONNX / NCNN / MNN / TFLite artifacts (needs the [export] extra).

    from edge_irst.export import export
    report = export("LW_IRST.pkl", formats="onnx,ncnn,mnn", precisions="fp32,fp16", out="runs/export")
    print(report.table())

Importing this package imports neither torch nor a converter: `FORMATS` (export/formats.py) names each
converter as "module:function", loaded only for the formats asked for.
"""
from .exporter import ArtifactResult, ConversionError, ExportReport, export
from .formats import FORMATS, PRECISIONS, Format

__all__ = ["export", "ExportReport", "ArtifactResult", "ConversionError", "FORMATS", "PRECISIONS", "Format"]
