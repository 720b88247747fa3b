"""`similar` on N vectors (issue 40): query latency of brute force (torch matmul + topk), FAISS's exact index and
its approximate (IVF) one, the indexes' build times, and the approximate index's recall@10 against exact.

The rows are what `resnets embed` writes for a large collection: N x 2048 float32, drawn around 2,000 random
centres (a collection of images has groups of near-duplicates and classes; uniform random rows have no neighbours
to find, and no approximate index does well on them). They are written to a file and mapped (np.memmap), as the CLI
reads its index file: the page cache holds them, so the 8 GB of a million rows need not stay resident beside the
index's own copy. Queries are drawn like the rows, are not among them, and are run one at a time (batch of 1), as
`resnets similar` runs them. Brute force is the search without the index: the rows already normalised, one matrix
product and topk per query (the old `nearest` also normalised every row on each call).

    python benchmarks/similar_speed.py [--n 1000000] [--queries 100] [--exact-queries 100] [--json PATH]

Writes benchmarks/results/similar_speed.json; RESULTS.md's "`similar` on N vectors" section quotes it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from machine import cpu_and_threads

from resnets import inference as I

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "similar_speed.json"
BLOCK = 1 << 16  # rows generated at a time


def clustered_rows(path: Path, n: int, d: int, centres: torch.Tensor, seed: int) -> np.memmap:
    """n rows around `centres` (noise of the centres' own scale: cosine ~0.5 to their centre) written to `path`."""
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    g = torch.Generator().manual_seed(seed)
    for start in range(0, n, BLOCK):
        m = min(BLOCK, n - start)
        pick = torch.randint(0, len(centres), (m,), generator=g)
        rows[start : start + m] = (centres[pick] + torch.randn(m, d, generator=g)).numpy()
    rows.flush()
    return rows


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def latencies(search, queries: torch.Tensor) -> tuple[list[float], list[list[int]]]:
    """Seconds per query (one at a time) and each query's 10 neighbours."""
    times, found = [], []
    for q in queries:
        idx, s = timed(search, q[None])
        times.append(s)
        found.append(idx[0].tolist())
    return times, found


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return sum(len(set(f) & set(t)) for f, t in zip(found, truth)) / sum(len(t) for t in truth)


def summary(times: list[float]) -> dict:
    ms = sorted(1000 * t for t in times)
    return {
        "median_ms": round(statistics.median(ms), 3),
        "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 3),
        "queries": len(ms),
    }


def run(args: argparse.Namespace) -> dict:
    d, k = args.dim, 10
    centres = torch.randn(args.centres, d, generator=torch.Generator().manual_seed(1))
    queries = torch.from_numpy(np.array(clustered_rows(Path(args.tmp) / "q.npy", args.queries, d, centres, seed=2)))
    out: dict = {"n": args.n, "dim": d, "centres": args.centres, "k": k}
    rows, out["write_rows_s"] = timed(clustered_rows, Path(args.tmp) / "rows.npy", args.n, d, centres, 0)
    embeddings = torch.from_numpy(rows)  # the file's pages, mapped: no copy

    flat, out["build_exact_s"] = timed(I.search_index, embeddings, "exact")
    exact_q = queries[: args.exact_queries]
    t_exact, truth = latencies(lambda q: I.neighbours(flat, q, k)[1], exact_q)
    # brute force on the very rows the exact index holds (already unit length): one product and topk a query
    unit = torch.from_numpy(faiss.rev_swig_ptr(flat.get_xb(), args.n * d).reshape(args.n, d))
    t_brute, brute = latencies(lambda q: (F.normalize(q, dim=1) @ unit.T).topk(k, dim=1).indices, exact_q)
    unit = flat = None  # the exact index's copy of the rows freed before the IVF one is built
    out["brute_force_agreement"] = recall(brute, truth)

    ivf, out["build_approx_s"] = timed(I.search_index, embeddings, "approx")
    lists, scanned = I.ivf_lists(args.n)
    t_approx, found = latencies(lambda q: I.neighbours(ivf, q, k)[1], queries)
    out["ivf"] = {"lists": lists, "scanned": scanned}
    out["recall_at_10"] = round(recall(found[: len(truth)], truth), 4)
    out["latency"] = {
        "brute force": summary(t_brute),
        "faiss exact": summary(t_exact),
        "faiss approx": summary(t_approx),
    }
    out["index_bytes"] = {"exact": args.n * d * 4, "approx": faiss.serialize_index(ivf).nbytes}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="rows (default 1,000,000: 8 GB of float32)")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--centres", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=100, help="approximate queries timed (default 100)")
    ap.add_argument("--exact-queries", type=int, default=100, help="brute-force and exact queries (default 100)")
    ap.add_argument("--tmp", default=None, help="a folder for the rows' file (default: a temporary one)")
    ap.add_argument("--note", default="", help="said in the results (e.g. that the machine was busy)")
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args()
    args.exact_queries = min(args.exact_queries, args.queries)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        args.tmp = tmp
        result = run(args)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": cpu_and_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "note": args.note,
        **result,
    }
    print(json.dumps(result, indent=2))
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
