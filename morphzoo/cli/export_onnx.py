"""``morphzoo export-onnx NAME OUT``: a model's decoder (and encoder) as ONNX, checked against onnxruntime
(:mod:`morphzoo.deployment`)."""

from __future__ import annotations

import argparse

from morphzoo.cli.view import load_model
from morphzoo.deployment import export_onnx


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a registry name (morphzoo list), a checkpoint folder, a Hub repository or a "
                                      "Lightning .ckpt written by morphzoo fit")
    parser.add_argument("out", help="a new (or empty) folder for decoder.onnx, encoder.onnx and export.json")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="largest onnxruntime - PyTorch difference accepted, plus float32 rounding of the outputs' "
                             "sums (default: 1e-5; metres for vertices)")


def run(args: argparse.Namespace) -> None:
    report = export_onnx(load_model(args.model), args.out, tolerance=args.tolerance, name=args.model)
    for key, graph in report["graphs"].items():
        print(f"{key}: {args.out}/{graph['file']} ({graph['input']} {graph['input_shape']} -> {graph['output']} "
              f"{graph['output_shape']}); onnxruntime matches PyTorch to {graph['max_abs_difference']:.1e} at "
              f"batch sizes {report['parity']['batches']}")
    if "encoder" not in report["graphs"]:
        print(f"no encoder: {report['class']} does not encode in one feed-forward pass (see morphzoo.deployment)")
