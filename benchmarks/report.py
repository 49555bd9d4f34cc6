"""Markdown tables from a benchmark run's results (see run.py)."""

from __future__ import annotations

import math

ITEMSIZE = {"float32": 4, "float64": 8}
MIN_ARRAYS, TWO_PASS_ARRAYS = 5, 8


def fmt_t(s):
    if math.isnan(s):
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def table(title, header, rows, note=""):
    out = [f"### {title}", ""]
    if note:
        out += [note, ""]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join("---" for _ in header) + "|")
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _level(ws_bytes):
    if ws_bytes <= 768 * 1024:
        return "L2"
    if ws_bytes <= 24 * 1024 * 1024:
        return "L3"
    return "DRAM"


def bandwidth(R, level):
    """Best median read+write streaming rate (GB/s) the harness measured at a level."""
    bw = (R.get("bw") or {}).get("bw", {})
    vals = [r["gbps"] for r in bw.values() if r["level"] == level]
    return max(vals) if vals else float("nan")


def _noise(T):
    t = next(iter(T.values()))
    return f"{t['foreign_mean']:.2f}/{t['foreign_max']:.2f} ({t['quiet_rounds']}/{t['rounds']})"


def _variants(results):
    names = []
    for r in results:
        for v in r.get("timing", {}):
            if v not in names:
                names.append(v)
    return names


def render(R):
    parts = [f"Run started {R.get('started')}, {R.get('total_s', float('nan')):.0f} s"
             f"{' (--quick)' if R.get('quick') else ''}; machine: "
             + ", ".join(f"{k} {v}" for k, v in R.get("machine", {}).items()) + "\n"]
    vers = (R.get("bw") or {}).get("versions") or next(
        (r.get("versions") for r in R.get("bn", []) + R.get("mlp", []) if "versions" in r), {})
    if vers:
        parts.append("Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()
                                              if k != "threadpools")
                     + f"; thread pools {vers.get('threadpools')}\n")

    bw = (R.get("bw") or {}).get("bw", {})
    if bw:
        methods = []
        for r in bw.values():
            if r["method"] not in methods:
                methods.append(r["method"])
        rows = []
        for level in ("L2", "L3", "DRAM"):
            rs = {r["method"]: r for r in bw.values() if r["level"] == level}
            if rs:
                mib = next(iter(rs.values()))["array_bytes"] / 2**20
                rows.append([level, f"{mib:.2f}"] + [f"{rs[m]['gbps']:.1f}" if m in rs else "-"
                                                     for m in methods])
        parts.append(table("Memory bandwidth, GB/s (median; bytes = streams × array size)",
                           ["level", "MiB/array"] + methods, rows))

    for cfg in ("default", "thp", "passive", "spin1000"):
        bn = [r for r in R.get("bn", []) if "timing" in r and r.get("config") == cfg]
        if not bn:
            continue
        names = _variants(bn)
        rows, rows_lb, rows_chk = [], [], []
        for r in bn:
            c, T = r["case"], r["timing"]
            label = f"{c['N']}×{c['p']} {c['dtype']}"
            ref = T.get("torch_native", {}).get("median", float("nan"))
            rows.append([label] + [f"{fmt_t(T[v]['median'])} ({T[v]['median'] / ref:.2f}×)"
                                   if v in T else "-" for v in names] + [_noise(T)])
            unit = c["N"] * c["p"] * ITEMSIZE[c["dtype"]]
            lvl = _level(MIN_ARRAYS * unit)
            gbps = bandwidth(R, lvl)
            lb = MIN_ARRAYS * unit / (gbps * 1e9)
            rows_lb.append([label, lvl, f"{gbps:.1f}", fmt_t(lb),
                            fmt_t(TWO_PASS_ARRAYS * unit / (gbps * 1e9))]
                           + [f"{100 * lb / T[v]['median']:.0f}%" if v in T else "-"
                              for v in names])
            for v, chk in r.get("check", {}).items():
                rows_chk.append([label, v] + [f"{chk[k]:.1e}" for k in ("y", "dx", "dgamma",
                                                                          "dbeta")])
        parts.append(table(
            f"Batch norm forward+backward [{cfg}]: median per call (ratio to torch_native)",
            ["case"] + names + ["other load: mean/max cores (quiet rounds)"], rows))
        parts.append(table(
            f"Batch norm forward+backward [{cfg}]: % of the memory-bandwidth floor",
            ["case", "level", "GB/s", "LB (5 arrays)", "LB2 (8 arrays)"] + names, rows_lb,
            "LB = 5 N×p arrays at the bandwidth of the cache level that holds them; "
            "% = LB / median time."))
        if cfg == "default" and rows_chk:
            parts.append(table("Batch norm correctness: max |error| / max |exact| against float64 "
                               "formulas", ["case", "variant", "y", "dx", "dgamma", "dbeta"],
                               rows_chk))
        errs = [f"{r['case']}: {v}: {e}" for r in bn for v, e in r.get("errors", {}).items()]
        if errs:
            parts.append("Variants that did not run: " + "; ".join(errs) + "\n")

    mlp = [r for r in R.get("mlp", []) if "timing" in r]
    if mlp:
        names = _variants(mlp)
        rows, rows_chk = [], []
        for r in mlp:
            T = r["timing"]
            ref = T.get("torch_eager", {}).get("median", float("nan"))
            rows.append([f"N={r['case']['N']}", r.get("config")]
                        + [f"{fmt_t(T[v]['median'])} ({T[v]['median'] / ref:.2f}×), "
                           f"min {fmt_t(T[v]['min'])}" if v in T else "-" for v in names]
                        + [_noise(T)])
            for v, chk in r.get("check", {}).items():
                rows_chk.append([f"N={r['case']['N']}", r.get("config"), v, f"{chk['loss']:.6f}",
                                 f"{chk['loss_diff']:.1e}", f"{chk['param_diff']:.1e}",
                                 f"{chk['update']:.1e}"])
        parts.append(table("Training step (float32): median (ratio to torch_eager), min",
                           ["batch", "config"] + names + ["other load"], rows))
        parts.append(table("Training step: after one step from the same start, against torch_eager",
                           ["batch", "config", "variant", "loss", "|Δloss|", "max |Δparam|",
                            "max |update|"], rows_chk))

    mem = [m for m in R.get("mem", []) if "transient_bytes" in m]
    for kind, title, unit in (("bn", "Batch norm forward+backward, float32", "N×p arrays"),
                              ("mlp", "Training step, float32", "N×256 float32 arrays")):
        ms = [m for m in mem if m["kind"] == kind]
        if not ms:
            continue
        names, cases = [], []
        for m in ms:
            if m["variant"] not in names:
                names.append(m["variant"])
            key = (m["N"], m["p"])
            if key not in cases:
                cases.append(key)
        rows = []
        for key in cases:
            row = [f"{key[0]}×{key[1]}" if kind == "bn" else f"N={key[0]}"]
            for v in names:
                m = next((m for m in ms if m["variant"] == v and (m["N"], m["p"]) == key), None)
                row.append("-" if m is None else
                           f"{m['transient_bytes'] / 2**20:.1f} MiB "
                           f"({m['transient_bytes'] / m['unit_bytes']:.1f}) "
                           f"+{m['persistent_bytes'] / 2**20:.1f}")
            rows.append(row)
        parts.append(table(f"{title}: transient peak per call, MiB ({unit}), + persistent MiB",
                           ["case"] + names, rows))
    return "\n".join(parts)
