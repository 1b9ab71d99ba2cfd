"""Caption extension throughput: concurrency 32 vs 1 against the mock server (100 ms per request).

Run: python bench/extend_captions.py [--records-fast 640] [--records-slow 32]
Prints records/second side by side and checks that no record is lost or duplicated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from exgra.data.captions import ExtendCaptionsOptions, extend_captions, journal_path_for  # noqa: E402
from exgra.llm import LLMSettings  # noqa: E402
from tests.llm.mock_openai_server import MockOpenAIServer  # noqa: E402


def run(server: MockOpenAIServer, folder: Path, records: int, concurrency: int) -> dict:
    source = folder / f"in_{concurrency}.json"
    rows = [
        {"id": f"r{i}", "image": f"{i}.jpg", "conversations": [
            {"from": "human", "value": f"<image>\nWhat is shown in {i}?"},
            {"from": "gpt", "value": f"Finding {i}."},
        ]}
        for i in range(records)
    ]  # fmt: skip
    source.write_text(json.dumps(rows))
    output = folder / f"out_{concurrency}.json"
    options = ExtendCaptionsOptions(
        source, output, LLMSettings(model="mock", base_url=server.base_url, concurrency=concurrency),
        show_progress=False,
    )  # fmt: skip
    started = time.perf_counter()
    report = extend_captions(options)
    seconds = time.perf_counter() - started
    ids = [r["id"] for r in json.loads(output.read_text())]
    journal = [json.loads(x)["index"] for x in journal_path_for(output).read_text().splitlines()[1:]]
    return {
        "records": records,
        "seconds": seconds,
        "per_second": records / seconds,
        "lost": records - len(set(ids)),
        "duplicated": (len(ids) - len(set(ids))) + (len(journal) - len(set(journal))),
        "extended": report.extended,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records-fast", type=int, default=640)
    parser.add_argument("--records-slow", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.1)
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")
    with tempfile.TemporaryDirectory() as tmp, MockOpenAIServer(latency=args.latency) as server:
        slow = run(server, Path(tmp), args.records_slow, 1)
        fast = run(server, Path(tmp), args.records_fast, 32)
    table = Table(title=f"extend-captions against the mock server ({args.latency * 1000:.0f} ms per request)")
    for column in ("concurrency", "records", "seconds", "records/s", "lost", "duplicated"):
        table.add_column(column, justify="right")
    for concurrency, row in ((1, slow), (32, fast)):
        table.add_row(
            str(concurrency), str(row["records"]), f"{row['seconds']:.2f}", f"{row['per_second']:.1f}",
            str(row["lost"]), str(row["duplicated"]),
        )  # fmt: skip
    Console().print(table)
    print(f"speed-up: {fast['per_second'] / slow['per_second']:.1f}x (target >= 20x)")


if __name__ == "__main__":
    main()
