"""Every benchmark's results in one shape: <name>.json (everything, the exact command included) and <name>.md
(the table a person reads), written atomically side by side; the markdown is also printed."""

from __future__ import annotations

from pathlib import Path

from worldmodel.atomic import write_json_atomic, write_text_atomic


def write_result(json_path, data: dict, markdown: list[str]) -> None:
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(json_path, data)
    write_text_atomic(json_path.with_suffix(".md"), "\n".join(markdown) + "\n")
    print("\n".join(markdown))
