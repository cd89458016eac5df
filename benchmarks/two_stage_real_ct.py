"""What 004's two stages do on real, unpaired CT (#5): G(C->N) removes contrast from real CECT,
G(N->C) adds it to real NCCT. Not a test: a measurement with pictures.

Train first (stage 1 needs no pairs; stage 2 needs only the CECT and stage 1's output):

    vcesdk-train training/recipes/two_stage_small.yaml --out runs/two_stage_real \\
        --unpaired-ncct ../shared/data/ct/pyradiomics_lung1/lung1_image.nrrd \\
                        ../shared/data/ct/totalseg_abdomen_native/example_ct.nii.gz \\
        --unpaired-cect ../shared/data/ct/hcc048_portal_venous/dicom \\
                        ../shared/data/ct/totalseg_chest_cta/aorta_report_ct_cropped.nii.gz \\
        --max-steps 1500 --set loss.pretrain_steps=200 --set loss.stage1_steps=700 \\
        --set "data.crop=[3, 64, 64]" --set loss.paired_weight=0 \\
        --set data.noise_free_target=false

(the cropped chest CTA is 94 x 90 px at 2 mm; unpaired scans train the paper's adversarial
stage 1, without the recipe's paired term and noise-free target). The README's figures were
measured with the recipe of sessions 9-11: add ``--set generator.config.full_res=0 --set
optim.decay_every=1000`` to train that one.

then ``python benchmarks/two_stage_real_ct.py runs/two_stage_real --out
runs/two_stage_real_report``.

Each generator is exported to a temporary bundle (ONNX, parity checked) and run by
``vcesdk.Synthesizer`` on whole volumes; the contrast guard's blood-pool estimate
(:mod:`vcesdk.contrast`) measures the enhancement before and after. Writes ``report.json`` and a
PNG strip per volume (input | output | difference).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"
CECT = {"hcc048_pvp": SHARED / "hcc048_portal_venous" / "dicom",
        "chest_cta": SHARED / "totalseg_chest_cta" / "aorta_report_ct_cropped.nii.gz"}
NCCT = {"lung1": SHARED / "pyradiomics_lung1" / "lung1_image.nrrd",
        "abdomen_native": SHARED / "totalseg_abdomen_native" / "example_ct.nii.gz"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="two_stage run folder trained on the unpaired real CT")
    p.add_argument("--out", required=True, help="report folder to create")
    args = p.parse_args(argv)

    from vcesdk.export import export_bundle
    from vcesdk.training.trainer import load_checkpoint

    from vcesdk import Synthesizer, read_volume
    from vcesdk.contrast import estimate_contrast
    from vcesdk.io.atomic import atomic_output
    from vcesdk.preview import preview_strip
    from vcesdk.volume import orient_volume

    ckpt = load_checkpoint(args.run)
    recipe = ckpt["recipe"]
    if recipe["method"] != "two_stage":
        print(f"{args.run} is a {recipe['method']} run, not two_stage", file=sys.stderr)
        return 1
    parity = read_volume(NCCT["lung1"])
    report: dict = {"run": str(args.run), "step": int(ckpt["step"]), "volumes": {}}
    with tempfile.TemporaryDirectory() as tmp, atomic_output(Path(args.out), is_dir=True,
                                                              overwrite=True) as out:
        c2n = {**ckpt, "generator": ckpt["backward_generator"],
               "recipe": {**recipe, "name": recipe["name"] + "-stage1-c2n"}}
        synths = {"G(C->N)": Synthesizer(export_bundle(c2n, Path(tmp) / "c2n", parity),
                                         contrast_guard="off"),
                  "G(N->C)": Synthesizer(export_bundle(ckpt, Path(tmp) / "n2c", parity),
                                         contrast_guard="off")}
        for net, inputs in (("G(C->N)", CECT), ("G(N->C)", NCCT)):
            for name, path in inputs.items():
                vol = read_volume(path)
                res = synths[net].synthesize(vol)
                before, after = estimate_contrast(vol), estimate_contrast(res)
                shown, shown_out = orient_volume(vol), orient_volume(res)
                png = out / f"{name}_{'c2n' if net == 'G(C->N)' else 'n2c'}.png"
                preview_strip(shown.hu, shown_out.hu, png, spacing_mm=shown.spacing_zyx_mm)
                report["volumes"][name] = {
                    "network": net, "input": str(path), "png": png.name,
                    "before": dataclasses.asdict(before), "after": dataclasses.asdict(after),
                    "mean_change_hu": float((res.hu - vol.hu).mean()),
                    # what happens to tissues that contrast does not change much: fat, and
                    # to the body as a whole (masks from the input's HU)
                    **{f"{t}_hu": {"before": float(vol.hu[m].mean()),
                                   "after": float(res.hu[m].mean())}
                       for t, m in (("fat", (vol.hu > -150) & (vol.hu < -50)),
                                    ("soft_tissue", (vol.hu > 0) & (vol.hu < 100)))}}
                print(f"{net} on {name}: blood pool {before.blood_pool_hu} -> "
                      f"{after.blood_pool_hu} HU, enhanced {before.enhanced} -> "
                      f"{after.enhanced}; fat {report['volumes'][name]['fat_hu']['before']:.0f}"
                      f" -> {report['volumes'][name]['fat_hu']['after']:.0f} HU, soft tissue "
                      f"{report['volumes'][name]['soft_tissue_hu']['before']:.0f} -> "
                      f"{report['volumes'][name]['soft_tissue_hu']['after']:.0f} HU; {png.name}")
        (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
