#!/usr/bin/python3
"""Charts of `sparq-run bench -o json` (or jsonl) results (Debian's python3 and
python3-matplotlib, hence /usr/bin/python3).

Decode (tg) rows against context depth, one line per attention setting (and
per threads / batch / KV type where those vary): time per token, with the time
the same bytes would take at the measured read bandwidth dashed; KV + weight
bytes per token; achieved GB/s against the bandwidth line. With --tps, one
chart instead: decode tokens/s against depth (mean and sd of the repetitions),
with --peer adding points measured elsewhere (another engine, another run),
each labelled with where they come from. The run's build, CPU, kernel tier and
date (from the JSON) go under the title.

    build/sparq-run bench -m MODEL -n 64 -d 0,4096,16384 --attention dense,sparq:8 -o json > bench.json
    scripts/plot_bench.py bench.json -o bench.png
    scripts/plot_bench.py bench.json --tps -o tps.png \
        --peer "llama.cpp c392e50, Zen 5, 2026-11-23=0:537.8,4096:199.1,16384:65.9"
"""
import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    """Rows and bandwidth (GB/s) of one results file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        doc = json.loads(text)
        return doc["rows"], doc["bandwidth_gbs"], doc
    except json.JSONDecodeError:  # jsonl: the run-wide fields repeat in every line
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        if not rows:
            sys.exit(f"error: {path} holds no results")
        return rows, rows[0]["bandwidth_gbs"], rows[0]


def provenance(run):
    """'build X, CPU (tier kernels), date' of a run's JSON, as far as it says."""
    parts = [f"sparq-run {run['build_commit']}" if run.get("build_commit") else "",
             run.get("cpu", ""), f"{run['kernels']} kernels" if run.get("kernels") else "",
             run.get("test_time", "")[:10]]
    return ", ".join(p for p in parts if p)


def parse_peer(text):
    """'LABEL=DEPTH:TPS,DEPTH:TPS,...' -> (label, [(depth, tps), ...])."""
    label, sep, points = text.rpartition("=")
    try:
        pts = [(int(d), float(t)) for d, t in (p.split(":") for p in points.split(","))]
    except ValueError:
        pts = []
    if not sep or not label or not pts:
        sys.exit(f"error: --peer wants LABEL=DEPTH:TPS,DEPTH:TPS,..., got '{text}'")
    return label, sorted(pts)


def plot_tps(rows, peers, title, subtitle, out):
    """One chart: decode tokens/s against depth, one line per setting and per peer."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (label, pts) in enumerate(series(rows).items()):
        ax.errorbar([p["depth"] for p in pts], [p["tps_mean"] for p in pts],
                    yerr=[p.get("tps_sd", 0) for p in pts], fmt="o-", capsize=3, color=f"C{i}",
                    label=f"sparq-run {label}")
    for label, pts in peers:
        ax.plot([d for d, _ in pts], [t for _, t in pts], "s--", color="0.45", label=label)
    ax.set_xlabel("context depth (tokens in the cache)")
    ax.set_ylabel("decode tokens / s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(subtitle, fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def series(rows):
    """Decode rows grouped into lines, each sorted by depth."""
    varying = [k for k in ("threads", "parallel", "kv_type") if len({r[k] for r in rows}) > 1]
    lines = {}
    for r in rows:
        label = " ".join([r["attention"]] + [f"{k}={r[k]}" for k in varying])
        lines.setdefault(label, []).append(r)
    return {k: sorted(v, key=lambda r: r["depth"]) for k, v in lines.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="output of sparq-run bench -o json or -o jsonl")
    ap.add_argument("-o", "--out", default="bench.png", help="PNG to write")
    ap.add_argument("--title", help="chart title (default: the model's name)")
    ap.add_argument("--tps", action="store_true", help="one chart of decode tokens/s against depth")
    ap.add_argument("--peer", action="append", default=[], metavar="LABEL=D:TPS,...",
                    help="with --tps: points measured elsewhere, labelled with their provenance (repeatable)")
    args = ap.parse_args()

    rows, bandwidth, run = [], None, {}
    for path in args.results:
        r, bw, run = load(path)
        rows += [x for x in r if x["n_gen"] > 0]
        bandwidth = bw if bandwidth is None else min(bandwidth, bw)
    if not rows:
        sys.exit("error: no decode (tg) rows to plot; run the bench with -n > 0")
    model = run.get("model", "")
    if args.peer and not args.tps:
        sys.exit("error: --peer needs --tps")
    if args.tps:
        plot_tps(rows, [parse_peer(p) for p in args.peer], args.title or f"sparq-run decode speed: {model}",
                 provenance(run), args.out)
        print(f"wrote {args.out}")
        return

    fig, (ax_t, ax_b, ax_g) = plt.subplots(1, 3, figsize=(13, 4))
    for i, (label, pts) in enumerate(series(rows).items()):
        color = f"C{i}"
        depth = [p["depth"] for p in pts]
        total = [p["kv_bytes_per_token"] + p["weight_bytes_per_token"] for p in pts]
        ax_t.plot(depth, [p["ms_per_token"] for p in pts], "o-", color=color, label=label)
        ax_t.plot(depth, [b / (bandwidth * 1e9) * 1e3 for b in total], "--", color=color, alpha=0.6)
        ax_b.plot(depth, [b / 1e6 for b in total], "o-", color=color, label=label)
        ax_g.plot(depth, [p["gbs"] for p in pts], "o-", color=color, label=label)
    ax_g.axhline(bandwidth, color="k", linestyle=":", label=f"measured read bandwidth {bandwidth:.0f} GB/s")

    ax_t.set_title("time per token (dashed: the same bytes at full bandwidth)", fontsize=9)
    ax_t.set_ylabel("ms / token")
    ax_b.set_title("bytes read per token (KV + weights)", fontsize=9)
    ax_b.set_ylabel("MB / token")
    ax_g.set_title("achieved read rate", fontsize=9)
    ax_g.set_ylabel("GB/s")
    ax_g.set_ylim(bottom=0)
    for ax in (ax_t, ax_b, ax_g):
        ax.set_xlabel("context depth (tokens in the cache)")
        ax.grid(alpha=0.3)
    ax_t.set_ylim(bottom=0)
    ax_b.set_ylim(bottom=0)
    ax_b.legend(fontsize=8)
    ax_g.legend(fontsize=8)
    fig.suptitle(args.title or f"sparq-run bench, decode: {model} ({provenance(run)})")
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
