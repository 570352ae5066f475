"""Images in: sources, DICOM/PNG/JPEG decoding, validation, splits and dataset manifests."""
