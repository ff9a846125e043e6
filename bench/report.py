"""The benchmark's printed table: each figure for the mock alone, through Tollgate, and their ratio."""

from __future__ import annotations

import argparse
import os
from typing import Any

from bench import batch, dialects, workers

STREAM_CONCURRENCY = 16
SOAK_CONCURRENCY = 16
LARGE_PROMPT_CONCURRENCY = 16


def fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def compare(mock: object, tollgate: object, *, latency: bool) -> str:
    if not isinstance(mock, (int, float)) or not isinstance(tollgate, (int, float)):
        return ""
    if latency:
        return f"{tollgate - mock:+.2f} ms"
    return f"{tollgate / mock:.2f}x" if mock else ""


def gate_cost(plain: dict[str, Any], gated: dict[str, Any]) -> str:
    """What the gate adds to a request: the difference between the gated and the plain tenant, same process."""
    parts = []
    if plain["cpu_ms_per_request"] is not None and gated["cpu_ms_per_request"] is not None:
        parts.append(f"{gated['cpu_ms_per_request'] - plain['cpu_ms_per_request']:+.3f} CPU ms/request")
    if plain["p50_ms"] is not None and gated["p50_ms"] is not None:
        parts.append(f"{gated['p50_ms'] - plain['p50_ms']:+.2f} ms p50 latency")
    if plain["overhead_p50_ms"] is not None and gated["overhead_p50_ms"] is not None:
        parts.append(f"{gated['overhead_p50_ms'] - plain['overhead_p50_ms']:+.2f} ms overhead header p50")
    return ", ".join(parts) or "-"


def row(label: str, mock: object, tollgate: object, *, latency: bool = False, ratio: bool = True, digits: int = 2) -> str:
    verdict = compare(mock, tollgate, latency=latency) if ratio else ""
    return f"  {label:<26}{fmt(mock, digits):>12}{fmt(tollgate, digits):>14}{verdict:>16}"


def metrics_lines(metrics: dict[str, Any]) -> list[str]:
    """Plain requests through the process with TOLLGATE_METRICS off and the one with it on, and what they cost."""
    off, on = metrics["off"], metrics["on"]

    def line(label: str, name: str, digits: int) -> str:
        a, b = off[name], on[name]
        change = f"{b - a:+.{digits}f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else ""
        return f"  {label:<26}{fmt(a, digits):>12}{fmt(b, digits):>14}{change:>16}"

    verdict = "OK" if metrics["counted"] == metrics["answered"] else "MISMATCH"
    return [f"metrics: plain requests at c={metrics['concurrency']}, two processes alternating, "
            f"{metrics['rounds']} phases each (means)",
            f"  {'':<26}{'metrics off':>12}{'metrics on':>14}{'on - off':>16}",
            line("CPU ms/request", "cpu_ms_per_request", 3),
            line("requests/s", "rps", 1),
            line("p50 latency ms", "p50_ms", 2),
            line("p99 latency ms", "p99_ms", 2),
            line("overhead header p50 ms", "overhead_p50_ms", 2),
            f"  {'errors':<26}{off['errors']:>12}{on['errors']:>14}",
            f"  scrape: tollgate_requests_total {metrics['counted']} for {metrics['answered']} answered  {verdict}"]


def batch_lines(results: dict[str, Any]) -> list[str]:
    """The table's part: lines/s, worker CPU per line, interactive latency without and with, rows and money."""
    n, rate, inter = results["lines"], results["lines_per_second"], results["interactive"]
    without, beside = inter["without"], inter["with"]
    rise = results["p50_rise_percent"]
    verdict = "" if rise is None else "  OK" if rise <= batch.P50_TARGET_PERCENT else "  ABOVE TARGET"
    counts, money = results["request_counts"], results["money"]
    pace = f"at most {results['per_minute']} started a minute" if results["per_minute"] else "no pace"
    out = [f"batch: {n} chat lines on one Celery worker process (1 prefork child, {results['in_flight']} lines in flight, "
           f"{pace}, queue {results['queue']}), interactive plain requests at c={batch.CONCURRENCY} throughout",
           f"  {'lines/s':<26}{fmt(rate['run'], 1):>12} from first line claimed to last finished "
           f"({fmt(results['line_seconds'])} s); {fmt(rate['end_to_end'], 1)} created to completed "
           f"({fmt(results['end_to_end_seconds'])} s)",
           f"  {'worker CPU ms/line':<26}{fmt(results['worker_cpu_ms_per_line'], 3):>12} (its process tree, created to completed)",
           f"  {'interactive c=' + str(batch.CONCURRENCY):<26}{'no batch':>12}{'batch runs':>14}{'change':>16}"]
    for label, name, digits in (("requests/s", "rps", 1), ("p50 latency ms", "p50_ms", 2), ("p99 latency ms", "p99_ms", 2),
                                ("web CPU ms/request", "web_cpu_ms_per_request", 3)):
        a, b = without[name], beside[name]
        change = f"{(b - a) / a * 100:+.1f} %" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else ""
        out.append(f"  {'  ' + label:<26}{fmt(a, digits):>12}{fmt(b, digits):>14}{change:>16}"
                   + (f"{verdict} (target <= {batch.P50_TARGET_PERCENT:g} %)" if name == "p50_ms" and verdict else ""))
    counted = [f"{phase['requests']}, {phase['errors']}" for phase in (without, beside)]
    out += [f"  {'  requests, errors':<26}{counted[0]:>12}{counted[1]:>14}",
            f"  batch {results['status']}: {counts['completed']} completed, {counts['failed']} failed of {counts['total']}; "
            f"ledger {results['rows']} rows with its id ({results['custom_ids']} custom ids, {results['rows_200']} of them 200, "
            f"{results['tenant_rows']} rows of the tenant, {results['warmup_rows']} of them the {results['warmup_lines']}-line "
            f"warm-up batch's); output file {results['output_lines']} lines"
            f"  {'OK' if batch.rows_exact(results) else 'MISMATCH'}",
            f"  batch spend ({results['discount_percent']} % batch discount, {results['cost_picos_per_line']} picos a line): "
            f"ledger {money['ledger_micros']} micro-USD, budget totals {money['counter_micros']}; still reserved "
            f"{money['reserved_micros']}, open holds {money['open_holds']}  {'OK' if batch.money_exact(money) else 'MISMATCH'}"]
    if without["first_error"] or beside["first_error"]:
        out.append(f"  first interactive error: {without['first_error'] or beside['first_error']}")
    return out


def table(results: dict[str, Any], opts: argparse.Namespace) -> str:
    lines = [f"Tollgate benchmark: {opts.seconds:g} s phases, one uvicorn worker, PostgreSQL + Redis ledger, {os.cpu_count()} CPUs",
             f"  {'':<26}{'mock alone':>12}{'via Tollgate':>14}{'Tollgate/mock':>16}"]
    phases = {(p["target"], p["concurrency"]): p for p in results["phases"]}
    for c in opts.concurrency:
        m, t = phases[("mock", c)], phases[("tollgate", c)]
        lines += [f"concurrency {c}",
                  row("requests/s", m["rps"], t["rps"], digits=1),
                  row("p50 latency ms", m["p50_ms"], t["p50_ms"], latency=True),
                  row("p99 latency ms", m["p99_ms"], t["p99_ms"], latency=True),
                  row("errors", m["errors"], t["errors"], ratio=False),
                  row("CPU ms/request", m["cpu_ms_per_request"], t["cpu_ms_per_request"], digits=3),
                  row("overhead header p50 ms", None, t["overhead_p50_ms"], ratio=False),
                  row("load generator CPU ms/req", m["loadgen_cpu_ms_per_request"], t["loadgen_cpu_ms_per_request"], digits=3)]
        if g := phases.get(("gated", c)):
            lines += ["  with the gate on (2 budgets, limits on key and tenant), in the Tollgate column:",
                      row("requests/s", m["rps"], g["rps"], digits=1),
                      row("p50 latency ms", m["p50_ms"], g["p50_ms"], latency=True),
                      row("errors", m["errors"], g["errors"], ratio=False),
                      row("CPU ms/request", m["cpu_ms_per_request"], g["cpu_ms_per_request"], digits=3),
                      row("overhead header p50 ms", None, g["overhead_p50_ms"], ratio=False),
                      f"  gate cost: {gate_cost(t, g)}"]
    m, t = results["streams"]
    lines += [f"streams: {STREAM_CONCURRENCY} concurrent mock-slow x {opts.stream_rounds} rounds (20 chunks, 50 ms apart)",
              row("first data: p50 ms", m["ttfb_p50_ms"], t["ttfb_p50_ms"], latency=True),
              row("first data: p99 ms", m["ttfb_p99_ms"], t["ttfb_p99_ms"], latency=True),
              row("total stream p50 ms", m["total_p50_ms"], t["total_p50_ms"], latency=True),
              row("errors", m["errors"], t["errors"], ratio=False)]
    if reference := results.get("reference_streams"):
        lines += ["  bare Django forwarder (no auth, no ledger), in the Tollgate column:",
                  row("first data: p50 ms", m["ttfb_p50_ms"], reference["ttfb_p50_ms"], latency=True),
                  row("total stream p50 ms", m["total_p50_ms"], reference["total_p50_ms"], latency=True),
                  row("errors", m["errors"], reference["errors"], ratio=False)]
    if large := results.get("large_prompt"):
        alone, during, loaded = large["alone"], large["during"], large["loaded"]
        paced, big = large["paced_large"], large["large"]
        mb = f"{large['prompt_bytes'] / 2**20:g} MB"
        lines += [f"large prompt: plain requests at c={LARGE_PROMPT_CONCURRENCY} alone (first column), then those in flight "
                  f"while one {mb} one-word prompt was admitted and answered (the gated key sends one at a time, "
                  f"{large['pause_seconds']:g} s apart; second column)",
                  row("requests", alone["requests"], during["requests"], ratio=False),
                  row("p50 latency ms", alone["p50_ms"], during["p50_ms"], latency=True),
                  row("p99 latency ms", alone["p99_ms"], during["p99_ms"], latency=True),
                  f"  {mb} prompts one at a time: {paced['requests']} answered 200, p50 {fmt(paced['p50_ms'])} ms, "
                  f"{paced['errors']} errors",
                  f"  stress, {mb} prompts back to back (second column: every plain request of the phase):",
                  row("requests/s", alone["rps"], loaded["rps"], digits=1),
                  row("p50 latency ms", alone["p50_ms"], loaded["p50_ms"], latency=True),
                  row("p99 latency ms", alone["p99_ms"], loaded["p99_ms"], latency=True),
                  row("errors", alone["errors"], loaded["errors"], ratio=False),
                  f"  {mb} prompts back to back: {big['requests']} answered 200, p50 {fmt(big['p50_ms'])} ms, "
                  f"p99 {fmt(big['p99_ms'])} ms, {big['errors']} errors"]
    if metrics := results.get("metrics"):
        lines += metrics_lines(metrics)
    if cached := results.get("cached"):
        plain, hits = cached["plain"], cached["hits"]
        lines += [f"response cache: plain requests (first column) and hits of one cached request, c={cached['concurrency']}, "
                  f"alternating x {cached['rounds']}",
                  row("requests/s", plain["rps"], hits["rps"], digits=1),
                  row("p50 latency ms", plain["p50_ms"], hits["p50_ms"], latency=True),
                  row("CPU ms/request", plain["cpu_ms_per_request"], hits["cpu_ms_per_request"], digits=3),
                  row("errors", plain["errors"], hits["errors"], ratio=False)]
    if spoken := results.get("dialects"):
        lines += dialects.lines(spoken)
    if fleet := results.get("workers"):
        lines += workers.lines(fleet)
    if queued := results.get("batch"):
        lines += batch_lines(queued)
    rss = results["rss_mb"]
    lines.append(f"Tollgate RSS: {rss['after_warmup']:.1f} MB after warm-up, {rss['end']:.1f} MB at the end")
    if soak := results.get("soak"):
        lines.append(f"soak {opts.soak:g} s at c={SOAK_CONCURRENCY}: {soak['requests']} requests, {soak['errors']} errors, "
                     f"{soak['rps']} req/s; RSS {soak['rss_start_mb']} -> {soak['rss_end_mb']} MB "
                     f"({soak['rss_change_percent']:+.1f} %, peak {soak['rss_peak_mb']} MB)")
    if money := results.get("money"):
        agree = all(c == money["ledger_micros"] for c in money["counter_micros"])
        lines.append(f"gated spend: ledger {money['ledger_micros']} micro-USD, budget totals {money['counter_micros']} "
                     f"{'OK' if agree else 'MISMATCH'}; still reserved {money['reserved_micros']}, "
                     f"open holds {money['open_holds']}")
    ledger = results["ledger"]
    verdict = "OK" if ledger["rows"] == ledger["requests"] else f"MISMATCH ({ledger['rows'] - ledger['requests']:+d})"
    lines.append(f"ledger rows: {ledger['rows']} for {ledger['requests']} requests  {verdict}")
    large_phases = [large[name] for name in ("alone", "loaded", "large")] if large else []
    errors = [f"  {p['target']} c={p.get('concurrency')}: {p['first_error']}"
              for p in results["phases"] + results["streams"] + large_phases if p["errors"]]
    errors += [f"  tollgate c={p['concurrency']}: {p['missing_overhead']} answers without x-tollgate-overhead-ms"
               for p in results["phases"] if p.get("missing_overhead")]
    if results["tollgate_log_errors"]:
        errors += ["  tollgate log: " + line for line in results["tollgate_log_errors"]]
    return "\n".join(lines + (["first errors:", *errors] if errors else []))
