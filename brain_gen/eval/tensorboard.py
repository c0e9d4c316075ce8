"""Write ``eval/*`` scalars and images into a run's TensorBoard folder, in an event file of their own.

TensorBoard reads every event file of a folder, so the evaluation process adds its
own file beside the training logger's instead of sharing a writer with it.
"""

from __future__ import annotations

import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) of a PNG image, read from its header."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def write_events(folder: Path, step: int, scalars: dict[str, float], images: dict[str, bytes] | None = None) -> None:
    """Scalars and PNG images at ``step``, written and flushed before returning."""
    writer = EventFileWriter(str(folder), filename_suffix=".eval")
    try:
        values = [Summary.Value(tag=tag, simple_value=float(value)) for tag, value in scalars.items()]
        for tag, png in (images or {}).items():
            width, height = png_size(png)
            # Colorspace 4: RGBA, what matplotlib's PNGs hold.
            image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
            values.append(Summary.Value(tag=tag, image=image))
        writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))
        writer.flush()
    finally:
        writer.close()
