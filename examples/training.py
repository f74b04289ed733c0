"""Build a point-in-time training frame for the demo project.

Run `make demo` first (it generates the events and materializes the tiles), then:

    .venv/bin/python examples/training.py

Labels here are whether the user clicks in the next hour; the features are what the model
would have known at each row's time.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from robusta.training import get_training_frame

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    rows = pd.DataFrame(
        {
            "USER_ID": ["u_000001", "u_000002", "u_000003", "u_000001"],
            "ts": pd.to_datetime(
                ["2024-01-05 12:00", "2024-01-07 08:30", "2024-01-10 19:45", "2024-01-12 00:00"],
                utc=True,
            ),
            "label": [1, 0, 0, 1],
        }
    )
    frame = get_training_frame(
        rows,
        ["user_events_1h", "user_clicks_1d", "user_dwell_avg_7d", "user_recent_items_1d"],
        config=ROOT / "robusta.yaml",
    )
    print(frame.toPandas().to_string())


if __name__ == "__main__":
    main()
