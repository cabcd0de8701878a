"""DICOM objects the node writes: Segmentation (seg), Structured Report (sr), Secondary Capture (sc)."""
