"""What a file says about itself besides its pixels: size, modification time and the EXIF
fields people filter photos by. Read from the bytes the loader already holds (PIL parses
only the header), so the facts cost no second read of the file.

Columns (their types in :data:`FACT_TYPES`; absent values are null):

- ``file_size`` (bytes), ``mtime`` (UTC, to the second);
- ``taken`` (EXIF DateTimeOriginal, else DateTime; local time as the camera wrote it, no zone),
  ``camera_make``, ``camera_model``, ``lens``, ``focal_length`` (mm), ``iso``,
  ``gps_latitude`` / ``gps_longitude`` (degrees, south and west negative), ``orientation``
  (the EXIF code 1–8, before the loader turned the image upright).
"""
from __future__ import annotations

import io
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

FACT_TYPES = {
    "file_size": pa.int64(), "mtime": pa.timestamp("ms"), "taken": pa.timestamp("ms"),  # Parquet keeps ms, not s
    "camera_make": pa.string(), "camera_model": pa.string(), "lens": pa.string(), "focal_length": pa.float64(),
    "iso": pa.int64(), "gps_latitude": pa.float64(), "gps_longitude": pa.float64(), "orientation": pa.int32(),
}
# EXIF tags (baseline TIFF, the Exif sub-IFD, the GPS sub-IFD).
_MAKE, _MODEL, _ORIENTATION, _DATETIME = 0x010F, 0x0110, 0x0112, 0x0132
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATETIME_ORIGINAL, _FOCAL_LENGTH, _ISO, _LENS_MODEL = 0x9003, 0x920A, 0x8827, 0xA434
_GPS_LATITUDE_REF, _GPS_LATITUDE, _GPS_LONGITUDE_REF, _GPS_LONGITUDE = 1, 2, 3, 4


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _number(value: Any) -> float | None:
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if number == number else None  # NaN (a 0/0 rational) is no value


def _time(value: Any) -> datetime | None:
    text = _text(value)
    try:
        return datetime.strptime(text, "%Y:%m:%d %H:%M:%S") if text else None
    except ValueError:
        return None


def _degrees(value: Any, reference: Any) -> float | None:
    """Degrees from EXIF's (degrees, minutes, seconds) rationals; S and W negative."""
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        return None
    parts = [_number(part) for part in value]
    if any(part is None for part in parts):
        return None
    degrees = parts[0] + parts[1] / 60 + parts[2] / 3600
    return -degrees if _text(reference) in ("S", "W") else degrees


def exif_facts(data: bytes) -> dict[str, Any]:
    """The EXIF columns of an image file's bytes (nulls where absent or unreadable)."""
    facts: dict[str, Any] = dict.fromkeys(("taken", "camera_make", "camera_model", "lens", "focal_length", "iso",
                                           "gps_latitude", "gps_longitude", "orientation"))
    import PIL.Image  # here: the index's column types (FACT_TYPES) are read by queries that open no image

    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            exif = image.getexif()
            details, gps = exif.get_ifd(_EXIF_IFD), exif.get_ifd(_GPS_IFD)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no reason to lose the image
        return facts
    iso = _number(details.get(_ISO))
    orientation = _number(exif.get(_ORIENTATION))
    facts.update(
        taken=_time(details.get(_DATETIME_ORIGINAL)) or _time(exif.get(_DATETIME)),
        camera_make=_text(exif.get(_MAKE)), camera_model=_text(exif.get(_MODEL)), lens=_text(details.get(_LENS_MODEL)),
        focal_length=_number(details.get(_FOCAL_LENGTH)), iso=int(iso) if iso is not None else None,
        gps_latitude=_degrees(gps.get(_GPS_LATITUDE), gps.get(_GPS_LATITUDE_REF)),
        gps_longitude=_degrees(gps.get(_GPS_LONGITUDE), gps.get(_GPS_LONGITUDE_REF)),
        orientation=int(orientation) if orientation is not None and 1 <= orientation <= 8 else None,
    )
    return facts


def modified(stat: os.stat_result) -> datetime:
    """A file's mtime as the ``mtime`` column holds it (naive UTC, to the second)."""
    return datetime.fromtimestamp(stat.st_mtime, timezone.utc).replace(tzinfo=None, microsecond=0)


def file_facts(path: Path, data: bytes) -> dict[str, Any]:
    """Every column of the module docstring for the file at ``path`` whose bytes are ``data``."""
    try:
        mtime = modified(os.stat(path))
    except OSError:
        mtime = None
    return {"file_size": len(data), "mtime": mtime, **exif_facts(data)}
