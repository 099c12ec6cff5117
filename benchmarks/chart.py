"""The benchmark's chart: one PNG with throughput, bulk, CPU per request and idle memory.

python -m benchmarks.chart benchmarks/results/bench.json benchmarks/results/bench.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def draw(results: dict[str, Any], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here or in CI
    import matplotlib.pyplot as plt

    throughput = results["throughput"]
    labels: dict[str, str] = results["labels"]
    names = list(labels)
    colors = {name: f"C{index}" for index, name in enumerate(names)}
    figure, axes = plt.subplots(2, 2, figsize=(13, 9))
    (pingpong, bulk), (cpu, idle) = axes

    cases = [case for case in throughput if case.startswith("pingpong")]
    width = 0.8 / len(names)
    for offset, name in enumerate(names):
        entries = [throughput[case]["peers"][name] for case in cases]
        medians = [entry["median"] / 1000 for entry in entries]
        errors = [
            [(entry["median"] - entry["min"]) / 1000 for entry in entries],
            [(entry["max"] - entry["median"]) / 1000 for entry in entries],
        ]
        positions = [index + (offset - (len(names) - 1) / 2) * width for index in range(len(cases))]
        pingpong.bar(positions, medians, width, yerr=errors, capsize=2, label=labels[name],
                     color=colors[name])  # fmt: skip
    pingpong.set_xticks(range(len(cases)))
    pingpong.set_xticklabels([case.rsplit("-c", 1)[1] + " connection(s)" for case in cases])
    pingpong.set_ylabel("thousand requests/s (median, min-max)")
    pingpong.set_title("1 KiB ping-pong")
    pingpong.legend(fontsize=8)

    bulk_peers = throughput["bulk-64KiB-c1"]["peers"]
    values = [bulk_peers[name]["median"] / 1e9 for name in names]
    bulk_errors = [
        [(bulk_peers[name]["median"] - bulk_peers[name]["min"]) / 1e9 for name in names],
        [(bulk_peers[name]["max"] - bulk_peers[name]["median"]) / 1e9 for name in names],
    ]
    bulk.bar([labels[n] for n in names], values, yerr=bulk_errors, capsize=3,
             color=[colors[n] for n in names])  # fmt: skip
    bulk.set_ylabel("GB/s echoed")
    bulk.set_title("bulk, 64 KiB writes, 1 connection")
    bulk.tick_params(axis="x", labelsize=8)

    per_request = throughput["pingpong-1KiB-c100"]["peers"]
    user = [per_request[n]["server_cpu_us_per_request"]["user"] for n in names]
    system = [per_request[n]["server_cpu_us_per_request"]["system"] for n in names]
    cpu.bar([labels[n] for n in names], user, label="user", color="C0")
    cpu.bar([labels[n] for n in names], system, bottom=user, label="system", color="C7")
    cpu.set_ylabel("server CPU us per request")
    cpu.set_title("server CPU per request, 100 connections")
    cpu.legend(fontsize=8)
    cpu.tick_params(axis="x", labelsize=8)

    held = {n: v for n, v in results["idle"].items() if "rss_per_connection_kib" in v}
    held_labels = [
        labels[n] if held[n]["connections"] >= 10_000
        else f"{labels[n]}\n({held[n]['connections']:,} fit)"
        for n in held
    ]  # fmt: skip
    idle.bar(held_labels, [held[n]["rss_per_connection_kib"] for n in held],
             color=[colors[n] for n in held])  # fmt: skip
    idle.axhline(4.0, color="red", linestyle="--", linewidth=1, label="target: 4 KiB")
    idle.set_ylabel("server RSS KiB per connection")
    idle.set_title("10,000 idle connections held")
    idle.legend(fontsize=8)
    idle.tick_params(axis="x", labelsize=8)

    machine = results["machine"]
    figure.suptitle(
        f"tcpecho benchmark {results['date'][:10]}: {machine['cores']} cores, {machine['cpu']}, "
        f"Linux {machine['kernel']}; load average {results['load_average_before'][0]:.2f} "
        f"before, {results['load_average_after'][0]:.2f} after",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(target, dpi=90)
    plt.close(figure)


if __name__ == "__main__":
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
