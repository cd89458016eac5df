"""The [demo] targets on the unlabelled real native CT: each bundle (default: the three demo
bundles) on lung1 and the native abdomen, median change sCECT - NCCT in the hand-placed ROIs of
:data:`vcesdk.training.anatomy.REAL_CT_ROIS` against the reference of the bundle's phase.

    python benchmarks/demo_real_ct_rois.py [BUNDLE ...] [--shared ../shared/data/ct] [--json F]

Prints one markdown table; exit status 0 whatever the outcome (a measurement, not a test).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import vcesdk
from vcesdk.training.anatomy import REAL_CT_ROIS, hand_roi_check


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="*", default=[str(b) for b in vcesdk.DEFAULT_BUNDLES])
    p.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" /
                                           "data" / "ct"))
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    rows = []
    for rel, rois in REAL_CT_ROIS.items():
        ncct = vcesdk.read_volume(Path(args.shared) / rel)
        for b in args.bundles:
            syn = vcesdk.Synthesizer(b, contrast_guard="off")
            scect = syn.synthesize(ncct)
            for r in hand_roi_check(ncct.hu, scect.hu, rois, syn.bundle.phase):
                rows.append({"case": rel.split("/")[0], "bundle": syn.bundle.name,
                             "phase": syn.bundle.phase, **r})
    print("| case | phase | ROI | native HU | change HU | reference HU | error HU | target |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['case']} | {r['phase'].upper()} | {r['name']} | {r['native_hu']:.0f} | "
              f"{r['change_hu']:+.0f} | {r['reference_hu']:+.0f} | {r['error_hu']:+.0f} | "
              f"{'pass' if r['passed'] else 'FAIL'} (<= {r['tolerance_hu']:.0f}) |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
