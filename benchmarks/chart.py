"""The benchmark's chart: one PNG with ping-pong, bulk, accepts, CPU per request, idle memory
and tcpecho's ratios to its peers.

python -m benchmarks.chart benchmarks/results/bench.json benchmarks/results/bench.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def draw(results: dict[str, Any], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here or in CI
    import matplotlib.pyplot as plt

    throughput = results["throughput"]
    labels: dict[str, str] = results["labels"]
    colors = {name: f"C{index}" for index, name in enumerate(labels)}
    figure, axes = plt.subplots(2, 3, figsize=(19, 9))
    (pingpong, bulk, accepts), (cpu, idle, ratios) = axes
    _draw_groups(pingpong, throughput, "pingpong", labels, colors, 1000)
    pingpong.set_ylabel("thousand requests/s (median, min-max)")
    pingpong.set_title("1 KiB ping-pong")
    _draw_groups(bulk, throughput, "bulk", labels, colors, 1e9)
    bulk.set_ylabel("GB/s echoed (median, min-max)")
    bulk.set_title("bulk, 64 KiB writes: epoll client, and writer + reader threads")
    _draw_accepts(accepts, results.get("accepts", {}).get("peers", {}), labels, colors)
    _draw_cpu_per_request(cpu, throughput["pingpong-1KiB-c100"]["peers"], labels)
    _draw_idle_memory(idle, results["idle"], labels, colors)
    _draw_ratios(ratios, results.get("ratios", []), labels, colors)
    for axis in (accepts, cpu, idle):
        axis.tick_params(axis="x", labelsize=7, labelrotation=20)
    figure.suptitle(_title(results), fontsize=10)
    figure.tight_layout()
    figure.savefig(target, dpi=90)
    plt.close(figure)


def _draw_groups(
    axis: Axes,
    throughput: dict[str, Any],
    mode: str,
    labels: dict[str, str],
    colors: dict[str, str],
    scale: float,
) -> None:
    """One group of bars per case of ``mode`` (by connections), one bar per server."""
    names = list(labels)
    cases = [case for case in throughput if case.startswith(mode)]
    width = 0.8 / len(names)
    for offset, name in enumerate(names):
        entries = [throughput[case]["peers"][name] for case in cases]
        medians = [entry["median"] / scale for entry in entries]
        errors = [
            [(entry["median"] - entry["min"]) / scale for entry in entries],
            [(entry["max"] - entry["median"]) / scale for entry in entries],
        ]
        positions = [index + (offset - (len(names) - 1) / 2) * width for index in range(len(cases))]
        axis.bar(positions, medians, width, yerr=errors, capsize=2, label=labels[name],
                 color=colors[name])  # fmt: skip
    axis.set_xticks(range(len(cases)))
    axis.set_xticklabels([_case_label(case) for case in cases], fontsize=8)
    axis.legend(fontsize=7)


def _case_label(case: str) -> str:
    """``bulk-threads-64KiB-c4`` -> "threads, 4 conn(s)"; ``pingpong-1KiB-c10`` -> "10 conn(s)"."""
    shape, connections = case.rsplit("-c", 1)
    client = "threads, " if shape.startswith("bulk-threads") else ""
    client = "epoll, " if shape.startswith("bulk-64KiB") else client
    return f"{client}{connections} conn(s)"


def _draw_accepts(
    axis: Axes, peers: dict[str, Any], labels: dict[str, str], colors: dict[str, str]
) -> None:
    names = list(peers)
    values = [peers[name]["median"] / 1000 for name in names]
    errors = [
        [(peers[name]["median"] - peers[name]["min"]) / 1000 for name in names],
        [(peers[name]["max"] - peers[name]["median"]) / 1000 for name in names],
    ]
    axis.bar([labels[n] for n in names], values, yerr=errors, capsize=3,
             color=[colors[n] for n in names])  # fmt: skip
    axis.set_ylabel("thousand connections/s (median, min-max)")
    axis.set_title("accepts: connect, echo 64 B, close; 10 at a time")
    axis.tick_params(axis="x", labelsize=8)


def _draw_ratios(
    axis: Axes, rows: list[dict[str, Any]], labels: dict[str, str], colors: dict[str, str]
) -> None:
    """tcpecho / each peer, per case: the issue's ratios in one panel."""
    if not rows:
        return
    peers = list(rows[0]["versus"])
    width = 0.8 / len(peers)
    for offset, peer in enumerate(peers):
        values = [row["versus"][peer] or 0.0 for row in rows]
        positions = [index + (offset - (len(peers) - 1) / 2) * width for index in range(len(rows))]
        axis.barh(
            positions,
            values,
            width,
            label=f"tcpecho / {labels.get(peer, peer)}",
            color=colors.get(peer),
        )
    axis.axvline(1.0, color="black", linewidth=1)
    axis.set_yticks(range(len(rows)))
    axis.set_yticklabels([row["what"].split(":")[0].split(" (")[0] for row in rows], fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("tcpecho / peer: rates above 1, CPU below 1 favour tcpecho", fontsize=8)
    axis.set_title("tcpecho against its peers, this run")
    axis.legend(fontsize=7)


def _draw_cpu_per_request(axis: Axes, peers: dict[str, Any], labels: dict[str, str]) -> None:
    names = list(labels)
    user = [peers[n]["server_cpu_us_per_request"]["user"] for n in names]
    system = [peers[n]["server_cpu_us_per_request"]["system"] for n in names]
    axis.bar([labels[n] for n in names], user, label="user", color="C0")
    axis.bar([labels[n] for n in names], system, bottom=user, label="system", color="C7")
    axis.set_ylabel("server CPU us per request")
    axis.set_title("server CPU per request, 100 connections")
    axis.legend(fontsize=8)
    axis.tick_params(axis="x", labelsize=8)


def _draw_idle_memory(
    axis: Axes, idle: dict[str, Any], labels: dict[str, str], colors: dict[str, str]
) -> None:
    """Memory per idle connection, for the servers that measured it."""
    held = {n: v for n, v in idle.items() if "rss_per_connection_kib" in v}
    held_labels = [
        labels[n] if held[n]["connections"] >= 10_000
        else f"{labels[n]}\n({held[n]['connections']:,} fit)"
        for n in held
    ]  # fmt: skip
    axis.bar(held_labels, [held[n]["rss_per_connection_kib"] for n in held],
             color=[colors[n] for n in held])  # fmt: skip
    axis.axhline(4.0, color="red", linestyle="--", linewidth=1, label="target: 4 KiB")
    axis.set_ylabel("server RSS KiB per connection")
    axis.set_title("10,000 idle connections held")
    axis.legend(fontsize=8)
    axis.tick_params(axis="x", labelsize=8)


def _title(results: dict[str, Any]) -> str:
    """The date, the machine and its load: what to know before comparing two charts."""
    machine = results["machine"]
    return (
        f"tcpecho benchmark {results['date'][:10]}: {machine['cores']} cores, {machine['cpu']}, "
        f"Linux {machine['kernel']}; load average {results['load_average_before'][0]:.2f} "
        f"before, {results['load_average_after'][0]:.2f} after"
    )


if __name__ == "__main__":
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
