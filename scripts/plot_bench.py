#!/usr/bin/python3
"""Charts of `sparq-run bench -o json` (or jsonl) results (Debian's python3 and
python3-matplotlib, hence /usr/bin/python3).

Decode (tg) rows against context depth, one line per attention setting (and
per threads / batch / KV type where those vary): time per token, with the time
the same bytes would take at the measured read bandwidth dashed; KV + weight
bytes per token; achieved GB/s against the bandwidth line.

    build/sparq-run bench -m MODEL -n 64 -d 0,4096,16384 --attention dense,sparq:8 -o json > bench.json
    scripts/plot_bench.py bench.json -o bench.png
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
        return doc["rows"], doc["bandwidth_gbs"], doc.get("model", "")
    except json.JSONDecodeError:  # jsonl: the run-wide fields repeat in every line
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        if not rows:
            sys.exit(f"error: {path} holds no results")
        return rows, rows[0]["bandwidth_gbs"], rows[0].get("model", "")


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
    args = ap.parse_args()

    rows, bandwidth, model = [], None, ""
    for path in args.results:
        r, bw, model = load(path)
        rows += [x for x in r if x["n_gen"] > 0]
        bandwidth = bw if bandwidth is None else min(bandwidth, bw)
    if not rows:
        sys.exit("error: no decode (tg) rows to plot; run the bench with -n > 0")

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
    fig.suptitle(args.title or f"sparq-run bench, decode: {model}")
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
