"""Synthetic, clearly labelled DICOM data for the offline demo and tests."""
