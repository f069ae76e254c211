"""Hubble flow export: JSON lines on disk, rotated by size like Hubble's exporter (lumberjack)."""

from tendril.hubble.exporter.file import ExporterError, FileExporter
from tendril.hubble.exporter.rotate import backup_name, backups

__all__ = ["ExporterError", "FileExporter", "backup_name", "backups"]
