"""The ``vcesdk`` command.

    vcesdk synthesize INPUT -o OUTPUT_DIR [--model BUNDLE] [--format dicom|nifti|nrrd|mha]
    vcesdk export CHECKPOINT_OR_RUN_DIR -o BUNDLE --parity-input CT [--format onnx]
    vcesdk info [BUNDLE]

Every :class:`vcesdk.errors.VcesdkError` ends as one line on stderr and exit status 1.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import DEFAULT_BUNDLE, __version__
from .errors import InputError, VcesdkError

OUTPUT_FORMATS = ("dicom", "nifti", "nrrd", "mha")


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def cmd_synthesize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .fileio import atomic_output
    from .preview import preview_strip
    from .runtime import Synthesizer
    from .volume import orient_volume, output_path, read_volume, write_volume

    src = Path(args.input)
    out_dir = Path(args.output)
    src_dir = src if src.is_dir() else src.parent
    if src.is_dir() and _inside(out_dir, src_dir):
        raise InputError(f"output {out_dir} is inside the input folder {src_dir}; vcesdk never "
                         f"writes into an input series folder")
    if out_dir.exists() and not args.overwrite:
        raise InputError(f"output folder already exists: {out_dir} (choose another or pass "
                         f"--overwrite)")
    syn = Synthesizer(args.model, providers=args.providers)
    manifest = syn.bundle.manifest
    if manifest.get("demo"):
        print(f"note: {syn.bundle.name} is a demonstration model trained on phantoms; not for "
              f"clinical use", file=sys.stderr)
    vol = read_volume(src)
    print(f"input: {src} {vol.shape[0]} slices x {vol.shape[1]} x {vol.shape[2]}, spacing "
          f"{'/'.join(f'{s:.3g}' for s in vol.spacing_mm)} mm (z/y/x)")
    with tqdm(desc=f"synthesize {syn.bundle.phase.upper()}", unit="window",
              disable=args.quiet) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        scect = syn.synthesize(vol, progress=progress)
    lat = syn.last_latency
    phase = syn.bundle.phase
    with atomic_output(out_dir, is_dir=True, overwrite=args.overwrite) as tmp:
        vol_path = output_path(tmp, f"scect_{phase}", args.format)
        write_volume(scect, vol_path, like=vol,
                     series_description=f"SYNTHETIC {phase.upper()} ({syn.bundle.name})")
        # shown in radiological convention (LPS: anterior up, patient's left on the right)
        shown = orient_volume(vol)
        preview_strip(shown.hu, orient_volume(scect).hu, tmp / "preview.png",
                      spacing_mm=shown.spacing_mm)
        report = {
            "input": str(src), "output": vol_path.name, "preview": "preview.png",
            "bundle": syn.bundle.name, "phase": phase, "method": manifest["method"],
            "demo": bool(manifest.get("demo")), "shape": list(vol.shape),
            "spacing_mm": list(vol.spacing_mm), "latency": lat.__dict__ if lat else None,
            "vcesdk": __version__,
        }
        (tmp / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"wrote {out_dir / vol_path.name}, {out_dir / 'preview.png'}, "
          f"{out_dir / 'report.json'}")
    if lat is not None:
        print(lat.line())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    try:
        from .export import export_bundle
        from .export.bundle_writer import checkpoint_from_bundle
        from .export.formats import parse_formats
        from .training.trainer import load_checkpoint
    except ImportError as exc:
        raise VcesdkError(f"export needs the train and export extras ({exc.name} missing): "
                          f"pip install 'vcesdk[train,export]'") from None
    from .volume import read_volume

    formats = [f.name for f in parse_formats(args.format)]
    src = Path(args.checkpoint)
    if (src / "manifest.json").is_file():
        ckpt = checkpoint_from_bundle(src)
    else:
        try:
            ckpt = load_checkpoint(src)
        except FileNotFoundError as exc:
            raise InputError(str(exc)) from None
    path = export_bundle(ckpt, args.output, read_volume(args.parity_input), demo=args.demo,
                         overwrite=args.overwrite, formats=formats)
    m = json.loads((path / "manifest.json").read_text())
    print(f"bundle written: {path}")
    for name, meta in m["files"].items():
        if "parity" in meta:
            par = meta["parity"]
            print(f"  {name}: {meta['format']} parity max |error| {par['max_abs_hu']:.4f} HU "
                  f"(tolerance {par['tolerance_hu']} HU, {meta['precision']})")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ._native import build_info
    from .bundle import load_bundle

    b = load_bundle(args.bundle)
    m = b.manifest
    print(json.dumps({"bundle": str(b.path), "name": b.name, "phase": b.phase,
                      "method": m["method"], "demo": m.get("demo", False),
                      "files": {k: {kk: vv for kk, vv in v.items() if kk != "sha256"}
                                for k, v in m["files"].items()},
                      "native_kernel": build_info()}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vcesdk", description="Virtual contrast enhancement of CT.")
    p.add_argument("--version", action="version", version=f"vcesdk {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synthesize", help="NCCT in, synthetic contrast-enhanced CT out")
    s.add_argument("input", help="DICOM series folder, or .nii/.nii.gz/.nrrd/.mha file")
    s.add_argument("-o", "--output", required=True, help="output folder (must not exist)")
    s.add_argument("--model", default=str(DEFAULT_BUNDLE),
                   help="model bundle folder (default: the bundled demo model)")
    s.add_argument("--format", choices=OUTPUT_FORMATS, default="dicom",
                   help="output volume format (default dicom)")
    s.add_argument("--providers", nargs="+", default=None, metavar="PROVIDER",
                   help="ONNX Runtime execution providers in order of preference")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_synthesize)

    e = sub.add_parser("export", help="training checkpoint or bundle -> model bundle")
    e.add_argument("checkpoint", help="checkpoint.pt, a run folder holding one, or a bundle")
    e.add_argument("-o", "--output", required=True, help="bundle folder to create")
    e.add_argument("--format", default="onnx",
                   help="comma-separated formats: onnx, torchscript (tensorrt and "
                        "torch_tensorrt need a GPU machine)")
    e.add_argument("--parity-input", required=True,
                   help="real CT (file or DICOM folder) whose windows check the export")
    e.add_argument("--demo", action="store_true", help="mark as a demonstration model")
    e.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    e.set_defaults(func=cmd_export)

    i = sub.add_parser("info", help="describe a bundle and the native kernel build")
    i.add_argument("bundle", nargs="?", default=str(DEFAULT_BUNDLE))
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except VcesdkError as exc:
        print(f"vcesdk: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vcesdk: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
