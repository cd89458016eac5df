"""Load on one local Triton server: windows per second and ms per slice with 1, 2, 4 and 8
concurrent clients (threads, one Synthesizer each), dynamic batching on and off ([serving]).

    python benchmarks/triton_load.py [--bundle B] [--input CT] [--clients 1 2 4 8]
                                     [--rounds 2] [--shared-memory auto|system|off]
                                     [--json FILE]

Starts the nvidia-pytriton tritonserver (the ``serve`` extra) on 127.0.0.1 with free ports,
writes a ``--platform python`` repository (CPU instances) for each batching mode, runs every
client count, prints one markdown table and writes the rows as JSON. Each client synthesizes
the input `rounds` times; figures are aggregate over all clients: windows/s = windows sent /
wall time, ms/slice = wall time / slices synthesized (all clients together). A measurement,
not a test: nothing is asserted. Each row names the provider the clients used (``+shm`` when
window batches went through system shared memory; ``--shared-memory off`` sends them over gRPC).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import vcesdk
from vcesdk.data import sample_ct


def _run(url: str, bundle: str, vol, clients: int, rounds: int, shared_memory: str) -> dict:
    syns = [vcesdk.Synthesizer(bundle, providers=["Triton"], triton_url=url,
                               contrast_guard="off", triton_shared_memory=shared_memory)
            for _ in range(clients)]
    windows = [0] * clients
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(rounds):
                syns[i].synthesize(vol)
                windows[i] += syns[i].last_latency.windows
        except BaseException as exc:  # reported after the join, not swallowed
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    slices = clients * rounds * vol.shape[0]
    provider = syns[0].provider
    for syn in syns:
        syn.close()
    return {"clients": clients, "rounds": rounds, "wall_s": wall, "windows": sum(windows),
            "windows_per_s": sum(windows) / wall, "ms_per_slice": 1e3 * wall / slices,
            "provider": provider}


def main(argv: list[str] | None = None) -> int:
    from vcesdk.export.triton import write_triton_repository
    from vcesdk.triton_client import SHARED_MEMORY_MODES
    from vcesdk.triton_server import TritonServer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=str(vcesdk.DEFAULT_BUNDLE))
    p.add_argument("--input", default=str(sample_ct()))
    p.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--shared-memory", default="auto", choices=SHARED_MEMORY_MODES)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    vol = vcesdk.read_volume(args.input)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batching in (True, False):
            repo = write_triton_repository(args.bundle, Path(tmp) / f"repo_{batching}",
                                           platforms=["python"], kind="KIND_CPU",
                                           dynamic_batching=batching)
            with open(Path(tmp) / f"server_{batching}.log", "w", encoding="utf-8") as log:
                with TritonServer(repo, host="127.0.0.1", log=log) as server:
                    _run(server.grpc_url, args.bundle, vol, 1, 1, args.shared_memory)  # warm-up
                    for n in args.clients:
                        r = _run(server.grpc_url, args.bundle, vol, n, args.rounds,
                                 args.shared_memory)
                        rows.append({"dynamic_batching": batching, **r})
                        print(f"batching {'on' if batching else 'off'}, {n} client(s): "
                              f"{r['windows_per_s']:.1f} windows/s, "
                              f"{r['ms_per_slice']:.1f} ms/slice", file=sys.stderr)
    print("| dynamic batching | clients | windows/s | ms/slice (all clients) | wall s | provider |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {'on' if r['dynamic_batching'] else 'off'} | {r['clients']} | "
              f"{r['windows_per_s']:.1f} | {r['ms_per_slice']:.1f} | {r['wall_s']:.1f} | "
              f"{r['provider']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"input": args.input, "bundle": args.bundle,
                                               "rows": rows}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
