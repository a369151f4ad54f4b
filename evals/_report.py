"""The HTML report of one stored run: a single self-contained page with hand-written inline SVG plots.

Metric bars with their 95% intervals, the latency distributions, tokens and cost per answer, and a table of
every sample (question, reference, answer, retrieved sources, scores). No scripts, no external fonts or
styles: the page opens offline. Every string that came from documents, questions, answers or the judge is
escaped, so a passage holding `<script>` stays text. Not here: computing anything; it reads a stored run.
"""

from __future__ import annotations

import html
import json
import math

from ._metrics import METRICS, matches

__all__ = ["render_report"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1240px;
color:#1d2433;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde2ea;
padding-bottom:4px}.meta{color:#5a6475;font-size:13px}.grid{display:flex;flex-wrap:wrap;gap:18px}
.card{border:1px solid #dde2ea;border-radius:6px;padding:10px 12px;background:#fbfcfe}
table{border-collapse:collapse;width:100%;font-size:12.5px}th,td{border-bottom:1px solid #e6e9ef;padding:5px 6px;
vertical-align:top;text-align:left}th{background:#f2f4f8;position:sticky;top:0}td.q{width:20%}td.a{width:30%}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}.bad{color:#b42318}.ok{color:#067647}
.tag{display:inline-block;padding:0 5px;border-radius:3px;font-size:11px;background:#eef1f6;margin:1px}
.gold{background:#dcfae6}.pf{background:#fee4e2}details pre{white-space:pre-wrap;font-size:12px;background:#f6f7f9;
padding:6px;border-radius:4px;max-height:260px;overflow:auto}svg text{font-family:inherit}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(v, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if unit == "$":
        return f"${v:.6f}"
    return f"{v:.1f}" if unit else f"{v:.3f}"


def _bars(metrics: dict) -> str:
    """Horizontal bars (0..1) with interval whiskers for every score metric in the run."""
    rows = [(n, metrics[n]) for n, info in METRICS.items() if n in metrics and not info.unit]
    left, width, row_h = 190, 520, 26
    h = 30 + row_h * len(rows)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 210}" height="{h}" role="img" '
           f'aria-label="metric means with 95% intervals">']
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        x = left + t * width
        out.append(f'<line x1="{x:.1f}" y1="18" x2="{x:.1f}" y2="{h - 6}" stroke="#e3e7ee"/>'
                   f'<text x="{x:.1f}" y="13" font-size="10" text-anchor="middle" fill="#6b7280">{t:g}</text>')
    for i, (name, e) in enumerate(rows):
        y = 22 + i * row_h
        info = METRICS[name]
        colour = {"retrieval": "#2e90fa", "answer": "#12b76a", "judge": "#9e77ed", "refusal": "#f79009"}.get(
            info.group, "#667085")
        out.append(f'<text x="{left - 8}" y="{y + 13}" font-size="12" text-anchor="end">{_e(name)}</text>')
        if e.get("mean") is None:
            out.append(f'<text x="{left + 4}" y="{y + 13}" font-size="11" fill="#98a2b3">no value</text>')
        else:
            w = max(0.0, min(1.0, e["mean"])) * width
            out.append(f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{row_h - 8}" fill="{colour}" '
                       f'opacity="0.8"><title>{_e(name)}: {e["mean"]:.3f}</title></rect>')
            lo, hi = left + max(0, e["lo"]) * width, left + min(1, e["hi"]) * width
            mid = y + row_h / 2 - 1
            out.append(f'<line x1="{lo:.1f}" y1="{mid}" x2="{hi:.1f}" y2="{mid}" stroke="#1d2433" stroke-width="1.5"/>'
                       f'<line x1="{lo:.1f}" y1="{mid - 5}" x2="{lo:.1f}" y2="{mid + 5}" stroke="#1d2433"/>'
                       f'<line x1="{hi:.1f}" y1="{mid - 5}" x2="{hi:.1f}" y2="{mid + 5}" stroke="#1d2433"/>')
        note = f'{_num(e.get("mean"))} [{_num(e.get("lo"))}, {_num(e.get("hi"))}] n={e.get("n", 0)}'
        if e.get("parse_failure"):
            note += f', {e["parse_failure"]} parse failures'
        out.append(f'<text x="{left + width + 8}" y="{y + 13}" font-size="11" fill="#344054">{_e(note)}</text>')
    out.append("</svg>")
    return "".join(out)


def _histogram(values: list[float], title: str, unit: str, p50, p95, colour: str = "#2e90fa") -> str:
    w, h, pad_l, pad_b = 380, 190, 44, 34
    vals = [v for v in values if v is not None]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="{_e(title)}">',
           f'<text x="{w / 2}" y="14" font-size="12" text-anchor="middle" font-weight="600">{_e(title)}</text>']
    if not vals:
        out.append(f'<text x="{w / 2}" y="{h / 2}" font-size="11" text-anchor="middle" fill="#98a2b3">no values'
                   f'</text></svg>')
        return "".join(out)
    lo, hi = min(vals), max(vals)
    hi = hi if hi > lo else lo + 1
    bins = min(20, max(5, int(math.sqrt(len(vals))) + 3))
    counts = [0] * bins
    for v in vals:
        counts[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
    top = max(counts)
    plot_w, plot_h = w - pad_l - 10, h - pad_b - 24
    bw = plot_w / bins
    for i, c in enumerate(counts):
        bh = plot_h * c / top
        out.append(f'<rect x="{pad_l + i * bw + 1:.1f}" y="{24 + plot_h - bh:.1f}" width="{bw - 2:.1f}" '
                   f'height="{bh:.1f}" fill="{colour}" opacity="0.75"><title>{c}</title></rect>')
    base = 24 + plot_h
    out.append(f'<line x1="{pad_l}" y1="{base}" x2="{w - 10}" y2="{base}" stroke="#98a2b3"/>')
    out.append(f'<text x="{pad_l - 4}" y="28" font-size="10" text-anchor="end">{top}</text>'
               f'<text x="{pad_l - 4}" y="{base}" font-size="10" text-anchor="end">0</text>')
    for v, anchor in ((lo, "start"), (hi, "end")):
        x = pad_l + (v - lo) / (hi - lo) * plot_w
        out.append(f'<text x="{x:.1f}" y="{base + 13}" font-size="10" text-anchor="{anchor}">{_e(_num(v, unit))}</text>')
    for label, v, col in (("p50", p50, "#067647"), ("p95", p95, "#b42318")):
        if v is None:
            continue
        x = pad_l + (v - lo) / (hi - lo) * plot_w
        out.append(f'<line x1="{x:.1f}" y1="22" x2="{x:.1f}" y2="{base}" stroke="{col}" stroke-dasharray="4 3"/>'
                   f'<text x="{x:.1f}" y="{base + 26}" font-size="10" text-anchor="middle" fill="{col}">'
                   f'{label} {_e(_num(v, unit))}</text>')
    out.append("</svg>")
    return "".join(out)


def _per_answer(samples: list[dict]) -> str:
    """Stacked prompt/completion tokens per answer (bars) with cost per answer (dots, right axis)."""
    n = len(samples)
    w, h, pad_l, pad_r, pad_b = max(640, min(1180, 60 + 14 * n)), 230, 52, 70, 30
    plot_w, plot_h = w - pad_l - pad_r, h - pad_b - 30
    toks = [(s["usage"].get("prompt_tokens", 0), s["usage"].get("completion_tokens", 0)) for s in samples]
    costs = [sum(s["cost"].values()) if s.get("cost") else 0.0 for s in samples]
    tmax = max([p + c for p, c in toks] + [1])
    cmax = max(costs + [1e-12])
    bw = plot_w / max(n, 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
           f'aria-label="tokens and cost per answer">',
           '<text x="8" y="14" font-size="12" font-weight="600">tokens per answer (prompt, completion) and '
           'cost per answer</text>']
    base = 30 + plot_h
    for i, ((p, c), cost) in enumerate(zip(toks, costs)):
        x = pad_l + i * bw
        hp, hc = plot_h * p / tmax, plot_h * c / tmax
        tip = _e(f'{samples[i]["sample_id"]}: {p} prompt + {c} completion tokens, ${cost:.6f}')
        out.append(f'<rect x="{x + 1:.1f}" y="{base - hp:.1f}" width="{max(bw - 2, 1):.1f}" height="{hp:.1f}" '
                   f'fill="#b2ccff"><title>{tip}</title></rect>'
                   f'<rect x="{x + 1:.1f}" y="{base - hp - hc:.1f}" width="{max(bw - 2, 1):.1f}" height="{hc:.1f}" '
                   f'fill="#2e90fa"><title>{tip}</title></rect>')
        cy = base - plot_h * cost / cmax
        out.append(f'<circle cx="{x + bw / 2:.1f}" cy="{cy:.1f}" r="3" fill="#f79009"><title>{tip}</title></circle>')
    out.append(f'<line x1="{pad_l}" y1="{base}" x2="{w - pad_r}" y2="{base}" stroke="#98a2b3"/>'
               f'<text x="{pad_l - 4}" y="34" font-size="10" text-anchor="end">{tmax}</text>'
               f'<text x="{pad_l - 4}" y="{base}" font-size="10" text-anchor="end">0</text>'
               f'<text x="{w - pad_r + 4}" y="34" font-size="10" fill="#b54708">${cmax:.6f}</text>'
               f'<text x="{pad_l}" y="{base + 16}" font-size="10">answers in suite order; light = prompt, dark = '
               f'completion tokens; orange dots = cost</text></svg>')
    return "".join(out)


def _sample_rows(samples: list[dict]) -> str:
    shown = ("recall_at_k", "mrr", "rouge_l", "semantic_similarity", "string_presence", "context_precision",
             "context_recall", "faithfulness", "answer_relevancy", "llm_context_precision")
    rows = []
    for s in samples:
        srcs = []
        for c in s["contexts"]:
            gold = any(matches(c["path"], g) for g in s["gold_sources"])
            srcs.append(f'<span class="tag{" gold" if gold else ""}">[{c["n"]}] {_e(c["path"])}</span>')
        scores = []
        for name in shown:
            status = s["score_status"].get(name)
            v = s["scores"].get(name)
            if status == "parse_failure":
                scores.append(f'<span class="tag pf">{_e(name)}: parse failure</span>')
            elif status == "error":
                scores.append(f'<span class="tag pf">{_e(name)}: error</span>')
            elif v is not None:
                scores.append(f'<span class="tag">{_e(name)} {v:.2f}</span>')
        flag = ""
        if s["unanswerable"]:
            flag = (f'<span class="ok">declined (good)</span>' if s["declined"]
                    else '<span class="bad">answered an unanswerable question</span>')
        elif s["declined"]:
            flag = '<span class="bad">false refusal</span>'
        if s["status"] != "complete":
            flag += f' <span class="bad">{_e(s["status"])}: {_e(s["error"])}</span>'
        contexts = "".join(f'<pre>[{c["n"]}] {_e(c["path"])} ({_e(c["heading"])})\n{_e(c["text"])}</pre>'
                           for c in s["contexts"])
        notes = "".join(f"<div>{_e(k)}: {_e(v)}</div>" for k, v in s.get("score_notes", {}).items())
        t = s["timings"]
        rows.append(
            f'<tr><td>{_e(s["sample_id"])}</td><td class="q">{_e(s["question"])}'
            f'<div class="meta">gold: {_e(", ".join(s["gold_sources"]) or "-")}</div></td>'
            f'<td class="a">{_e(s["answer"])}<div>{flag}</div><details><summary>reference and passages</summary>'
            f'<pre>{_e(s["reference"])}</pre>{contexts}{notes}</details></td>'
            f'<td>{"".join(srcs)}</td><td>{"".join(scores)}</td>'
            f'<td class="num">{t["ttft_ms"]:.0f} / {t["total_ms"]:.0f} ms<br>{s["usage"]["prompt_tokens"]}+'
            f'{s["usage"]["completion_tokens"]} tok</td></tr>')
    return "".join(rows)


def render_report(run: dict, samples: list[dict]) -> str:
    m = run["summary"].get("metrics", {})
    lat = "".join(_histogram([s["scores"].get(k) for s in samples], f"{k} ({METRICS[k].unit})", METRICS[k].unit,
                             m.get(k, {}).get("p50"), m.get(k, {}).get("p95"), col)
                  for k, col in (("ttft_ms", "#2e90fa"), ("total_ms", "#9e77ed"), ("tokens_per_s", "#12b76a"),
                                 ("retrieval_ms", "#f79009")))
    cost_rows = "".join(
        f'<tr><td>{_e(k)}</td><td class="num">{_num(m[k]["mean"], METRICS[k].unit)}</td>'
        f'<td class="num">{_num(m[k].get("p50"), METRICS[k].unit)}</td>'
        f'<td class="num">{_num(m[k].get("p95"), METRICS[k].unit)}</td>'
        f'<td class="num">{_num(m[k].get("total"), METRICS[k].unit)}</td></tr>'
        for k in ("prompt_tokens", "completion_tokens", "cost_usd", "ttft_ms", "total_ms", "tokens_per_s",
                  "retrieval_ms") if k in m)
    h = run.get("harness", {})
    s = run["summary"]
    title = f'ragdesk eval run {run["id"]}'
    judge = f' · judge {_e(run["judge"])} ({s.get("judge_parse_failures", 0)} of {s.get("judge_calls", 0)} ' \
            f'judge calls unparseable)' if run.get("judge") else " · no judge (LLM-judged metrics not run)"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head><body>
<h1>{_e(title)}: {_e(run["suite"])}</h1>
<div class="meta">{_e(run["created_at"])} · model {_e(run["model"])} on {_e(run["versions"].get("device", "?"))} ·
speculative {_e(run["speculative"])} · collection {_e(run["collection"])} ({_e(run["collection_identity"])},
{_e(run["index_stats"].get("chunks", "?"))} chunks){judge} · {s["n"]} questions, {s.get("unanswerable", 0)}
unanswerable, {s.get("failed_answers", 0)} failed{(" · " + _e(run["label"])) if run.get("label") else ""}</div>
<h2>Metrics (mean and 95% bootstrap interval)</h2>
<div class="card">{_bars(m)}</div>
<h2>Latency</h2><div class="grid">{lat}</div>
<h2>Tokens and cost</h2><div class="card">{_per_answer(samples)}</div>
<table style="width:auto;margin-top:8px"><tr><th>per answer</th><th>mean</th><th>p50</th><th>p95</th>
<th>total</th></tr>{cost_rows}</table>
<div class="meta">harness: {h.get("total_s", 0):.1f}s in all, {h.get("stream_s", 0):.1f}s inside the answer
pipeline, {h.get("load_s", 0):.1f}s loading, overhead {h.get("overhead_excl_load_pct", 0):.1f}% of the run</div>
<h2>Samples</h2>
<table><tr><th>id</th><th>question</th><th>answer</th><th>retrieved (green = gold)</th><th>scores</th>
<th>first token / total</th></tr>{_sample_rows(samples)}</table>
<h2>Configuration</h2>
<details><summary>resolved settings and library versions</summary>
<pre>{_e(json.dumps(run["config"], indent=2))}</pre><pre>{_e(json.dumps(run["versions"], indent=2))}</pre>
</details>
</body></html>
"""
