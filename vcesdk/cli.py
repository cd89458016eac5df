"""The ``vcesdk`` command.

    vcesdk synthesize (INPUT | --sample) -o OUTPUT_DIR [--model BUNDLE ...]
                      [--format dicom|nifti|nrrd|mha] [--series UID] [--tilt refuse|resample]
                      [--oblique refuse|resample] [--contrast-guard warn|refuse|off]
                      [--hu-check refuse|warn|off] [--stride N]
    vcesdk demo -o OUTPUT_DIR [options of synthesize]   (= synthesize --sample)
    vcesdk inspect INPUT [--series UID] [--tilt refuse|resample]
    vcesdk export CHECKPOINT_OR_BUNDLE -o BUNDLE --parity-input CT
                  [--format onnx,torchscript,aoti,tensorrt] [--half | --int8 --calib DIR]
                  [--target local|jetson]
    vcesdk build-engine BUNDLE --parity-input CT [--precision fp32|fp16|int8]
    vcesdk benchmark BUNDLE [--providers ...] [--input CT] [--slices N] [--stride N]
                     --json FILE
    vcesdk triton BUNDLE -o REPOSITORY [--platform onnxruntime_onnx,...,python]
                  [--kind KIND_GPU|KIND_CPU] [--no-dynamic-batching]
    vcesdk triton-server REPOSITORY [--grpc-port N] [--http-port N] [--host 127.0.0.1]
                         [--model NAME ...]
    vcesdk info [BUNDLE]

``--sample`` (and ``demo``) reads the real CT shipped with the package
(:func:`vcesdk.data.sample_ct`, a TotalSegmentator test file, Apache-2.0), so the main job runs
in a fresh install with no data beside it.

Every :class:`vcesdk.errors.VcesdkError` ends as one line on stderr and exit status 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import warnings
from pathlib import Path

from . import DEFAULT_BUNDLE, DEFAULT_BUNDLES, __version__
from .errors import InputError, VcesdkError
from .io import FORMATS

OUTPUT_FORMATS = tuple(FORMATS)  # vcesdk.io.FORMATS: the one table of output formats
STRIDE_HELP = ("slices between consecutive model windows, overriding the bundle's (1 .. the "
               "window depth; smaller = more overlap, slower; recorded in the report)")


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def _provider_options(args: argparse.Namespace, bundle) -> dict[str, dict] | None:
    """ONNX Runtime provider options from --fp16 / --engine-cache / --workspace-gb."""
    if not (args.fp16 or args.engine_cache or args.workspace_gb):
        return None
    from .engines import ort_provider_options
    from .formats import DEFAULT_PROVIDER_ORDER

    names = list(args.providers or DEFAULT_PROVIDER_ORDER)
    return dict(zip(names, ort_provider_options(bundle, names, fp16=args.fp16,
                                                engine_cache=args.engine_cache,
                                                workspace_gb=args.workspace_gb)))


def _synthesis_input(args: argparse.Namespace) -> Path:
    """The CT to synthesize from: INPUT, or the shipped sample with --sample (exactly one).

    Raises:
        InputError: both or neither given; the sample is missing from the install.
    """
    if args.sample and args.input is not None:
        raise InputError(f"give either INPUT ({args.input}) or --sample, not both")
    if not args.sample and args.input is None:
        raise InputError("no input: give INPUT (a DICOM folder or a CT volume file) or "
                         "--sample (the CT shipped with vcesdk)")
    if args.input is not None:
        return Path(args.input)
    from .data import sample_ct

    try:
        return sample_ct()
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from None


def cmd_synthesize(args: argparse.Namespace) -> int:
    from .bundle import load_bundle
    from .io import read_volume
    from .runtime import Synthesizer

    src = _synthesis_input(args)
    out_dir = Path(args.output)
    src_dir = src if src.is_dir() else src.parent
    if src.is_dir() and _inside(out_dir, src_dir):
        raise InputError(f"output {out_dir} is inside the input folder {src_dir}; vcesdk never "
                         f"writes into an input series folder")
    if out_dir.exists() and not args.overwrite:
        raise InputError(f"output folder already exists: {out_dir} (choose another or pass "
                         f"--overwrite)")
    syns = []
    for model in args.model or [str(b) for b in DEFAULT_BUNDLES]:
        bundle = load_bundle(model)
        # one input, one contrast check: the first model's synthesis runs it for all phases
        syns.append(Synthesizer(bundle, providers=args.providers,
                                provider_options=_provider_options(args, bundle),
                                triton_url=args.triton_url, triton_model=args.triton_model,
                                triton_timeout_s=args.triton_timeout,
                                triton_shared_memory=args.triton_shared_memory,
                                contrast_guard=args.contrast_guard if not syns else "off",
                                hu_check=args.hu_check if not syns else "off",
                                oblique=args.oblique, stride=args.stride))
    phases = [s.bundle.phase for s in syns]
    if len(set(phases)) != len(phases):
        raise InputError(f"two --model bundles synthesize the same phase ({', '.join(phases)});"
                         f" give one bundle per phase")
    for syn in syns:
        if syn.bundle.manifest.get("demo"):
            print(f"note: {syn.bundle.name} is a demonstration model trained on phantoms; not "
                  f"for clinical use", file=sys.stderr)
    vol = read_volume(src, series_uid=args.series, tilt=args.tilt)
    print(f"input: {src} {vol.shape[0]} slices x {vol.shape[1]} x {vol.shape[2]}, spacing "
          f"{'/'.join(f'{s:.3g}' for s in vol.spacing_zyx_mm)} mm (z/y/x)")
    results, warned, entries = [], [], []
    try:
        _synthesize_into(args, src, vol, syns, out_dir, results, warned, entries)
    finally:  # the warnings of the phases that ran, also when a later step failed
        for message in warned:
            print(f"vcesdk: warning: {message}", file=sys.stderr)
    for e in entries:
        print(f"wrote {out_dir / e['output']}")
        for name in e["auxiliary"].values():
            print(f"wrote {out_dir / name}")
    print(f"wrote {out_dir / 'preview.png'}")
    print(f"wrote {out_dir / 'report.json'}")
    for _, _, lat, _ in results:
        if lat is not None:
            print(lat.line())
    return 0


def _synthesize_into(args: argparse.Namespace, src: Path, vol, syns: list, out_dir: Path,
                     results: list, warned: list, entries: list) -> None:
    """The synthesis and writing part of ``vcesdk synthesize``: every phase into a temporary
    folder renamed to `out_dir` when complete; `results`, `warned`, `entries` are filled in as
    phases finish."""
    from tqdm import tqdm

    from .io import output_path, write_volume
    from .io.atomic import atomic_output
    from .preview import preview_phases, preview_strip
    from .volume import orient_volume

    with atomic_output(out_dir, is_dir=True, overwrite=args.overwrite) as tmp:
        for syn in syns:
            phase = syn.bundle.phase
            vol_path = output_path(tmp, f"scect_{phase}", args.format)
            with tqdm(desc=f"synthesize {phase.upper()}", unit="window",
                      disable=args.quiet) as bar:
                def progress(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", UserWarning)
                    # a DICOM series streams: its slices are written by a thread as soon as
                    # they are final, while later windows are still in the model
                    try:
                        scect = syn.synthesize_to(
                            vol, vol_path, like=vol, progress=progress,
                            series_description=f"SYNTHETIC {phase.upper()} "
                                               f"({syn.bundle.name})")
                    finally:
                        warned.extend(m for m in dict.fromkeys(str(w.message) for w in caught)
                                      if m not in warned)
            lat = syn.last_latency
            aux = dict(syn.last_auxiliary)
            results.append((syn, scect, lat, aux))
            aux_files = {}
            for a in syn.bundle.auxiliary:  # e.g. MAN-GAN's subtraction map, its own series
                a_path = output_path(tmp, f"{a.name}_{phase}", args.format)
                write_volume(aux[a.name], a_path, like=vol, series_description=(
                    f"SYNTHETIC {a.name.upper()} {phase.upper()} ({syn.bundle.name})"))
                aux_files[a.name] = a_path.name
            entries.append({"output": vol_path.name, "preview": "preview.png",
                            "bundle": syn.bundle.name, "phase": phase,
                            "method": syn.bundle.manifest["method"],
                            "demo": bool(syn.bundle.manifest.get("demo")),
                            "provider": syn.provider, "auxiliary": aux_files,
                            "stride": syn.stride, "bundle_stride": syn.bundle_stride,
                            "latency": lat.__dict__ if lat else None})
        contrast = syns[0].last_contrast
        # shown in radiological convention (LPS: anterior up, patient's left on the right)
        shown = orient_volume(vol)
        if len(results) == 1:  # one phase: three slice levels
            preview_strip(shown.hu, orient_volume(results[0][1]).hu, tmp / "preview.png",
                          spacing_mm=shown.spacing_zyx_mm)
        else:  # a row per phase at the middle slice
            preview_phases(shown.hu, {syn.bundle.phase: orient_volume(scect).hu
                                      for syn, scect, _, _ in results},
                           tmp / "preview.png", spacing_mm=shown.spacing_zyx_mm)
        report = {"input": str(src), "shape": list(vol.shape),
                  "spacing_mm": list(vol.spacing_zyx_mm), "vcesdk": __version__,
                  "contrast_check": (dataclasses.asdict(contrast) | {"mode": args.contrast_guard}
                                     if contrast is not None else {"mode": "off"}),
                  "hu_check": (dataclasses.asdict(syns[0].last_hu) | {"mode": args.hu_check}
                               if syns[0].last_hu is not None else {"mode": "off"}),
                  **entries[0], "phases": entries}
        (tmp / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")


def _read_ct_list(path: str) -> list:
    """CT volumes from a file, a DICOM series folder, or a folder of those."""
    from .errors import VolumeReadError
    from .io import read_volume

    p = Path(path)
    try:
        return [read_volume(p)]
    except VolumeReadError:
        if not p.is_dir():
            raise
    vols = []
    for child in sorted(p.iterdir()):
        if child.name.startswith("."):
            continue
        vols.append(read_volume(child))
    if not vols:
        raise InputError(f"no CT volumes in {p}")
    return vols


def _import_export():
    try:
        from .export import bundle_writer
        from .training import trainer
    except ImportError as exc:
        raise VcesdkError(f"export needs the train and export extras ({exc.name} missing): "
                          f"pip install 'vcesdk[train,export]'") from None
    return bundle_writer, trainer


def cmd_export(args: argparse.Namespace) -> int:
    bundle_writer, trainer = _import_export()
    from .formats import FORMATS, formats_with_precision, parse_formats
    from .io import read_volume

    formats = [f.name for f in parse_formats(args.format)]
    # the GPU engine formats (--half, --int8, --max-batch, --workspace-gb), from the table
    gpu_formats = [f for f in formats if FORMATS[f].engine]
    options: dict[str, dict] = {f: {} for f in formats}
    if args.half and args.int8:
        raise InputError("choose one of --half and --int8")
    precision = "fp16" if args.half else "int8" if args.int8 else None
    if precision and not gpu_formats:
        fp32_only = [f for f in formats if f not in formats_with_precision(precision)]
        raise InputError(f"--{'half' if args.half else 'int8'} applies to "
                         f"{' and '.join(formats_with_precision(precision))}; "
                         f"{' and '.join(fp32_only)} export fp32")
    for f in gpu_formats:
        if precision:
            if f not in formats_with_precision(precision):
                raise InputError(f"--{'half' if args.half else 'int8'} is offered for "
                                 f"{', '.join(formats_with_precision(precision))} only"
                                 + (" (entropy calibration)" if args.int8 else ""))
            options[f]["precision"] = precision
        if args.max_batch:
            options[f]["max_batch"] = args.max_batch
        if args.workspace_gb and "workspace_gb" in FORMATS[f].options:
            options[f]["workspace_gb"] = args.workspace_gb
    if args.int8 and not args.calib and args.target == "local":
        raise InputError("--int8 needs --calib DIR (real CT volumes for calibration)")
    src = Path(args.checkpoint)
    if (src / "manifest.json").is_file():
        ckpt = bundle_writer.checkpoint_from_bundle(src)
    else:
        ckpt = trainer.load_checkpoint(src)   # InputError when there is none
    calib = _read_ct_list(args.calib) if args.calib and args.target == "local" else ()
    path = bundle_writer.export_bundle(ckpt, args.output, read_volume(args.parity_input),
                                       demo=args.demo, overwrite=args.overwrite,
                                       formats=formats, options=options, target=args.target,
                                       calib_volumes=calib)
    _print_files(path, "bundle written")
    return 0


def _print_files(path: Path, headline: str) -> None:
    m = json.loads((path / "manifest.json").read_text())
    print(f"{headline}: {path}")
    for name, meta in m["files"].items():
        if "parity" in meta:
            par = meta["parity"]
            print(f"  {name}: {meta['format']} parity max |error| {par['max_abs_hu']:.4f} HU "
                  f"(tolerance {par['tolerance_hu']} HU, {meta['precision']})")
    if "engine_build" in m:
        print(f"  engine to build on the {m['engine_build']['target']} device: "
              f"{m['engine_build']['command']} (or sh build_engine.sh)")


def cmd_build_engine(args: argparse.Namespace) -> int:
    from .export import engine_build  # TensorRT + ONNX Runtime; no PyTorch needed
    from .io import read_volume

    if args.precision == "int8" and not args.calib:
        raise InputError("int8 needs --calib DIR (real CT volumes for calibration)")
    path = engine_build.build_bundle_engine(
        args.bundle, read_volume(args.parity_input), precision=args.precision,
        workspace_gb=args.workspace_gb, max_batch=args.max_batch,
        calib_volumes=_read_ct_list(args.calib) if args.calib else ())
    _print_files(path, "engine built into")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from .benchmark import benchmark, table
    from .io.atomic import atomic_output

    json_path = Path(args.json)
    if json_path.exists() and not args.overwrite:
        raise InputError(f"{json_path} already exists (choose another or pass --overwrite)")
    report = benchmark(args.bundle, providers=args.providers, ct=args.input,
                       slices=args.slices, repeats=args.repeats, warmup=args.warmup,
                       write_format=args.write_format, stride=args.stride,
                       progress=lambda p: print(f"benchmarking {p} ...", file=sys.stderr))
    with atomic_output(json_path, is_dir=False, overwrite=args.overwrite) as tmp:
        tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
    overridden = {(e["stride"], e["bundle_stride"]) for e in report["backends"].values()
                  if e["stride"] != e["bundle_stride"]}
    for used, declared in sorted(overridden):  # the workers' log warning, once here
        print(f"vcesdk: warning: slice stride {used} overrides the bundle's stride {declared}",
              file=sys.stderr)
    print(f"{report['input']}: {next(iter(report['backends'].values()), {}).get('slices', '?')}"
          f" slices, {args.repeats} passes after {args.warmup} warm-up, writing "
          f"{args.write_format}")
    print(table(report))
    print(f"wrote {json_path}")
    return 0


def cmd_triton(args: argparse.Namespace) -> int:
    try:
        from .export.triton import servable_platforms, write_triton_repository
    except ImportError as exc:
        raise VcesdkError(f"the Triton writer needs the export extra ({exc.name} missing): "
                          f"pip install 'vcesdk[export]'") from None
    platforms = [p.strip() for p in args.platform.split(",") if p.strip()] \
        if args.platform else servable_platforms(args.bundle)
    repo = write_triton_repository(args.bundle, args.output, platforms=platforms,
                                   max_batch_size=args.max_batch_size,
                                   kind=args.kind, count=args.instances,
                                   dynamic_batching=not args.no_dynamic_batching,
                                   overwrite=args.overwrite)
    for model in sorted(p.parent.name for p in repo.glob("*/config.pbtxt")):
        print(f"  {repo / model}/config.pbtxt")
    print(f"Triton model repository written: {repo}")
    return 0


def cmd_triton_server(args: argparse.Namespace) -> int:
    """Run the nvidia-pytriton tritonserver on a repository in the foreground until
    interrupted (see :mod:`vcesdk.triton_server`)."""
    import signal

    from .triton_server import TritonServer

    def _terminate(signum, frame):  # `kill` ends the server the same way as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    server = TritonServer(args.repository, grpc_port=args.grpc_port, http_port=args.http_port,
                          host=args.host, models=args.model)
    server.start()
    try:
        server.wait_ready(args.ready_timeout)
        print(f"Triton server ready: {server.grpc_url} (gRPC), {server.http_url} (HTTP); "
              f"models: {', '.join(server.models)}", flush=True)
        print(f"  vcesdk synthesize CT -o OUT --providers Triton --triton-url "
              f"{server.grpc_url}", flush=True)
        code = server.process.wait() if server.process is not None else 1
    except KeyboardInterrupt:
        print("stopping the Triton server", file=sys.stderr, flush=True)
        server.stop()
        return 0
    finally:
        server.stop()
    from .triton_server import TritonServerError

    raise TritonServerError(f"tritonserver exited with status {code}")


def cmd_inspect(args: argparse.Namespace) -> int:
    from .contrast import estimate_contrast
    from .hu_check import hu_stats
    from .io import read_volume
    from .io.dicom import list_series
    from .volume import obliquity_deg, orientation_code

    src = Path(args.input)
    if src.is_dir():
        print(f"{'':2}{'SeriesInstanceUID':<64} {'no.':>5} {'mod':<4} {'images':>6} "
              f"{'matrix':>9} {'plane':<8} description")
        for s in list_series(src):
            mark = "* " if s.default else "  "
            print(f"{mark}{s.uid:<64} {s.number if s.number is not None else '':>5} "
                  f"{s.modality:<4} {s.images:>6} {f'{s.rows}x{s.columns}':>9} "
                  f"{s.plane + (' MF' if s.multiframe else ''):<8} {s.description}")
        print("  (* read when no --series is given)")
    vol = read_volume(src, series_uid=args.series, tilt=args.tilt)
    est = estimate_contrast(vol)
    hu = hu_stats(vol)
    print(f"volume: {vol.shape[0]} x {vol.shape[1]} x {vol.shape[2]} (D x H x W), spacing "
          f"{'/'.join(f'{s:.3g}' for s in vol.spacing_zyx_mm)} mm (z/y/x), orientation "
          f"{orientation_code(vol)}, {obliquity_deg(vol):.1f} degrees oblique, HU "
          f"{float(vol.hu.min()):.0f}..{float(vol.hu.max()):.0f}")
    print(f"hu check: {'CT in HU' if hu.plausible else 'NOT CT in HU'}: {hu.line()}")
    print(f"contrast: {est.line()}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ._native import build_info
    from .bundle import load_bundle

    b = load_bundle(args.bundle)
    m = b.manifest
    print(json.dumps({"bundle": str(b.path), "name": b.name, "phase": b.phase,
                      "method": m["method"], "demo": m.get("demo", False),
                      "outputs": {"image": {"channel": b.output_channel,
                                            "hu_range": list(b.output_hu),
                                            "compose": b.compose},
                                  **{a.name: {"channel": a.channel, "hu_range": list(a.hu_range),
                                              "description": a.description}
                                     for a in b.auxiliary}},
                      "files": {k: {kk: vv for kk, vv in v.items() if kk != "sha256"}
                                for k, v in m["files"].items()},
                      "native_kernel": build_info()}, indent=2))
    return 0


def _input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--series", metavar="UID",
                   help="SeriesInstanceUID to read from a folder holding several (default: the "
                        "largest axial CT series; 'vcesdk inspect FOLDER' lists them)")
    p.add_argument("--tilt", choices=("refuse", "resample"), default="refuse",
                   help="DICOM series with gantry tilt: refuse (default) or shift the slices "
                        "onto an orthogonal grid")


def _synthesize_options(s: argparse.ArgumentParser) -> None:
    """The options of ``synthesize`` and ``demo`` (everything but the input)."""
    s.add_argument("-o", "--output", required=True, help="output folder (must not exist)")
    s.add_argument("--model", action="append", default=None, metavar="BUNDLE",
                   help="model bundle folder (default: the bundled demo model); repeat for "
                        "several phases (one bundle per phase, one series each)")
    s.add_argument("--format", choices=OUTPUT_FORMATS, default="dicom",
                   help="output volume format (default dicom)")
    s.add_argument("--providers", nargs="+", default=None, metavar="PROVIDER",
                   help="execution providers in order of preference: ONNX Runtime's "
                        "(TensorrtExecutionProvider, CUDAExecutionProvider, "
                        "CPUExecutionProvider) or TorchScript, TorchScript:cuda, "
                        "AOTInductor, AOTInductor:cuda, TensorRTEngine, TorchTensorRT, or "
                        "Triton (alone, with --triton-url)")
    s.add_argument("--triton-url", metavar="URL",
                   help="with --providers Triton: the server, grpc://HOST:8001 or "
                        "http://HOST:8000 (windows run there only, never locally)")
    s.add_argument("--triton-model", metavar="NAME",
                   help="with --providers Triton: the server's model (default: the bundle's "
                        "name as vcesdk triton writes it, e.g. <bundle>_python)")
    s.add_argument("--triton-timeout", type=float, default=None, metavar="S",
                   help="with --providers Triton: seconds one window batch may retry an "
                        "unreachable server before the run fails (30)")
    s.add_argument("--triton-shared-memory", choices=("auto", "system", "off"), default=None,
                   help="with --providers Triton: pass window batches through system shared "
                        "memory: auto (default: when the URL's host is 127.0.0.1, localhost "
                        "or ::1, over the network if the server cannot map it), system "
                        "(always, else an error), off (never)")
    s.add_argument("--fp16", action="store_true",
                   help="TensorRT execution provider: allow fp16 kernels")
    s.add_argument("--engine-cache", metavar="DIR",
                   help="TensorRT execution provider: cache built engines in DIR")
    s.add_argument("--workspace-gb", type=float, metavar="GB",
                   help="TensorRT execution provider: builder workspace limit")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _input_options(s)
    s.add_argument("--oblique", choices=("refuse", "resample"), default="refuse",
                   help="volumes oblique to the patient axes: refuse (default) or run on an "
                        "axis-aligned resampled grid")
    s.add_argument("--contrast-guard", choices=("warn", "refuse", "off"), default="warn",
                   help="input that already looks contrast-enhanced: warn (default), refuse, "
                        "or do not check")
    s.add_argument("--hu-check", choices=("refuse", "warn", "off"), default="refuse",
                   help="input that does not look like CT in HU (no air near -1000: MR, PET, "
                        "unsigned exports, DICOM CT without rescale): refuse (default), warn, "
                        "or do not check")
    s.add_argument("--stride", type=int, default=None, metavar="N",
                   help=STRIDE_HELP)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from .formats import FORMATS  # the one format table (no torch)

    p = argparse.ArgumentParser(prog="vcesdk", description="Virtual contrast enhancement of CT.")
    p.add_argument("--version", action="version", version=f"vcesdk {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synthesize", help="NCCT in, synthetic contrast-enhanced CT out")
    s.add_argument("input", nargs="?", default=None,
                   help="DICOM series folder, or .nii/.nii.gz/.nrrd/.mha file (or --sample)")
    s.add_argument("--sample", action="store_true",
                   help="synthesize from the real native abdominal CT shipped with vcesdk "
                        "(TotalSegmentator test data, Apache-2.0) instead of INPUT")
    _synthesize_options(s)
    s.set_defaults(func=cmd_synthesize)

    d = sub.add_parser("demo", help="synthesize from the CT shipped with vcesdk (the same as "
                                    "'synthesize --sample')")
    _synthesize_options(d)
    d.set_defaults(func=cmd_synthesize, input=None, sample=True)

    e = sub.add_parser("export", help="training checkpoint or bundle -> model bundle")
    e.add_argument("checkpoint", help="checkpoint.pt, a run folder holding one, or a bundle")
    e.add_argument("-o", "--output", required=True, help="bundle folder to create")
    e.add_argument("--format", default="onnx",
                   help="comma-separated formats: onnx, torchscript, aoti (AOTInductor "
                        "package, CPU), aoti_cuda (needs a CUDA GPU), tensorrt (built from "
                        "the ONNX file; needs TensorRT and a GPU unless --target jetson), "
                        "torch_tensorrt (needs torch-tensorrt and a GPU)")
    e.add_argument("--half", action="store_true", help="fp16 TensorRT engines")
    e.add_argument("--int8", action="store_true",
                   help="int8 TensorRT engine, entropy-calibrated on --calib")
    e.add_argument("--calib", metavar="DIR",
                   help="real CT for int8 calibration: a volume file, a DICOM folder, or a "
                        "folder of those")
    e.add_argument("--target", choices=("local", "jetson"), default="local",
                   help="jetson: write the ONNX model, the engine profiles and a build "
                        "command; build the engine on the device with vcesdk build-engine")
    e.add_argument("--workspace-gb", type=int, metavar="GB",
                   help="TensorRT builder workspace limit (default 4)")
    e.add_argument("--max-batch", type=int, metavar="N",
                   help="largest window batch the engine profile covers (default: the "
                        "manifest's batch size)")
    e.add_argument("--parity-input", required=True,
                   help="real CT (file or DICOM folder) whose windows check the export")
    e.add_argument("--demo", action="store_true", help="mark as a demonstration model")
    e.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    e.set_defaults(func=cmd_export)

    g = sub.add_parser("build-engine",
                       help="build a bundle's TensorRT engine on this GPU (e.g. on a Jetson)")
    g.add_argument("bundle", help="bundle folder holding model.onnx")
    g.add_argument("--parity-input", required=True,
                   help="real CT whose windows check the engine against the ONNX model")
    g.add_argument("--precision", choices=FORMATS["tensorrt"].precisions, default=None,
                   help="default: the precision the bundle's engine_build names, else fp32")
    g.add_argument("--calib", metavar="DIR", help="real CT for int8 calibration")
    g.add_argument("--workspace-gb", type=int, metavar="GB", help="builder workspace (4)")
    g.add_argument("--max-batch", type=int, metavar="N",
                   help="largest window batch (when the manifest has no engine_build)")
    g.set_defaults(func=cmd_build_engine)

    b = sub.add_parser("benchmark", help="per-slice latency, memory and time outside the "
                                         "model for each backend, on a real CT")
    b.add_argument("bundle", nargs="?", default=str(DEFAULT_BUNDLE))
    b.add_argument("--providers", nargs="+", metavar="PROVIDER",
                   help="backends to measure (default: every one that can run the bundle)")
    b.add_argument("--input", metavar="CT",
                   help="real CT file or DICOM folder (default: the CT shipped with vcesdk, "
                        "vcesdk.data.sample_ct(), 30 slices)")
    b.add_argument("--slices", type=int, metavar="N",
                   help="cut or mirror-extend the CT to N slices")
    b.add_argument("--stride", type=int, default=None, metavar="N", help=STRIDE_HELP)
    b.add_argument("--repeats", type=int, default=5, help="timed passes per backend (5)")
    b.add_argument("--warmup", type=int, default=1, help="untimed passes first (1)")
    b.add_argument("--write-format", choices=OUTPUT_FORMATS, default="dicom",
                   help="format each pass writes (dicom)")
    b.add_argument("--json", required=True, metavar="FILE", help="report file to write")
    b.add_argument("--overwrite", action="store_true", help="replace an existing report")
    b.set_defaults(func=cmd_benchmark)

    t = sub.add_parser("triton", help="write a Triton Inference Server model repository")
    t.add_argument("bundle", nargs="?", default=str(DEFAULT_BUNDLE))
    t.add_argument("-o", "--output", required=True, help="repository folder to create")
    t.add_argument("--platform", help="comma-separated: onnxruntime_onnx, tensorrt_plan, "
                                      "pytorch_libtorch, python (Triton's Python backend "
                                      "running the ONNX file with ONNX Runtime; the one the "
                                      "nvidia-pytriton server loads) (default: every one the "
                                      "bundle has a model file for)")
    t.add_argument("--max-batch-size", type=int, default=4, help="Triton max_batch_size (4)")
    t.add_argument("--kind", choices=("KIND_GPU", "KIND_CPU"), default="KIND_GPU",
                   help="model instances on the server's GPUs (default) or its CPU")
    t.add_argument("--instances", type=int, default=1, metavar="N",
                   help="model instances per device (1)")
    t.add_argument("--no-dynamic-batching", action="store_true",
                   help="run every request alone (default: Triton merges requests into "
                        "batches of up to --max-batch-size windows)")
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(func=cmd_triton)

    ts = sub.add_parser("triton-server",
                        help="serve a Triton model repository with the tritonserver of the "
                             "nvidia-pytriton wheel (serve extra), until interrupted")
    ts.add_argument("repository", help="model repository (vcesdk triton --platform python)")
    ts.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (8001)")
    ts.add_argument("--http-port", type=int, default=8000, help="HTTP port (8000)")
    ts.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (127.0.0.1: this machine only; 0.0.0.0: all)")
    ts.add_argument("--model", action="append", default=None, metavar="NAME",
                    help="load only this model of the repository (repeatable; default all)")
    ts.add_argument("--ready-timeout", type=float, default=300.0, metavar="S",
                    help="seconds to wait for the models to load (300)")
    ts.set_defaults(func=cmd_triton_server)

    n = sub.add_parser("inspect", help="list the series of a DICOM folder; geometry and "
                                       "contrast check of the input")
    n.add_argument("input", help="DICOM folder, or .nii/.nii.gz/.nrrd/.mha file")
    _input_options(n)
    n.set_defaults(func=cmd_inspect)

    i = sub.add_parser("info", help="describe a bundle and the native kernel build")
    i.add_argument("bundle", nargs="?", default=str(DEFAULT_BUNDLE))
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # pydicom warns about every odd header of every file in a scanned folder, even files
        # of other series; what matters to the user reaches them as one error line. -v shows it.
        import pydicom.config  # noqa: F401  (its import sets the logger's level)

        logging.getLogger("pydicom").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
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
