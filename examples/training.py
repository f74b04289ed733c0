"""Build a point-in-time training frame for the demo project.

Run `make demo` first (it generates the events and materializes the tiles), then:

    .venv/bin/python examples/training.py

Labels here are whether the user clicks in the next hour; the features are what the model
would have known at each row's time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from robusta.training import get_training_frame, to_arrow

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    times = ["2024-01-05 12:00", "2024-01-07 08:30", "2024-01-10 19:45", "2024-01-12 00:00"]
    rows = pa.table(  # or a pandas / Polars frame, a Parquet or CSV path, a Spark DataFrame
        {
            "USER_ID": ["u_000001", "u_000002", "u_000003", "u_000001"],
            "ts": [datetime.fromisoformat(t).replace(tzinfo=UTC) for t in times],
            "label": [1, 0, 0, 1],
        }
    )
    frame = get_training_frame(
        rows,
        ["user_events_1h", "user_clicks_1d", "user_dwell_avg_7d", "user_recent_items_1d"],
        config=ROOT / "robusta.yaml",
    )
    for row in to_arrow(frame).to_pylist():  # an Arrow table (a Spark DataFrame on Spark)
        print(row)


if __name__ == "__main__":
    main()
